"""Predict from a checkpoint alone: :func:`load_model` and the :class:`Predictor` it returns.

Plain PyTorch (no Lightning import): a checkpoint written by :class:`hmc.training.HMCModule` carries
``checkpoint["hmc"]`` (:data:`CHECKPOINT_FORMAT`): ``hierarchy``, ``model_config``, ``score_kind``,
``scores``, ``probabilities`` (the HRN probability model, :data:`hmc.decoding.PROBABILITIES`;
None for other heads), ``calibration`` (:meth:`hmc.calibration.Calibration.to_dict`, or None),
``decoder``, ``decoder_kwargs``, ``loss``, ``loss_kwargs`` and ``transform`` (the keyword
arguments of :func:`hmc.data.transforms.build_transforms` for evaluation). The model, its label
tree, the probability model and its temperatures, the decoder with its options and the
evaluation transform are rebuilt from that one file, loaded with ``torch.load(weights_only=True)``.
Checkpoints of format ``hmc-checkpoint/2`` (before the probability model and calibration) load
with ``probabilities="states"`` (what they were evaluated with) and no calibration.
``hmc predict`` (see :mod:`hmc.cli`) is built on this.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hmc.calibration import Calibration
from hmc.checks import check_choice
from hmc.decoding import SCORES, Decoded, check_decoder, decode, resolve_probabilities
from hmc.files import list_images, predict_images, prediction_rows, row_columns, write_predictions
from hmc.hierarchy import Hierarchy, HierarchyError

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_KEY",
    "HierarchyMismatchError",
    "Predictor",
    "check_hierarchy",
    "list_images",
    "load_model",
    "read_checkpoint",
    "write_predictions",
]

CHECKPOINT_KEY = "hmc"
CHECKPOINT_FORMAT = "hmc-checkpoint/3"
# Older formats read with defaults for the keys they lack.
_UPGRADES: dict[str, dict[str, Any]] = {
    "hmc-checkpoint/2": {"probabilities": "states", "calibration": None},
}


class HierarchyMismatchError(HierarchyError):
    """A checkpoint used with a hierarchy other than the one it was trained on."""


def _describe(h: Hierarchy) -> str:
    sizes = "/".join(str(v) for v in h.level_sizes().values())
    name = h.metadata.get("name")
    label = f"{name!r} " if name else ""
    return f"{label}(levels {list(h.level_names)}, {sizes} nodes, fingerprint {h.fingerprint()})"


def check_hierarchy(stored: Hierarchy, given: Hierarchy, where: str) -> None:
    """Raise :class:`HierarchyMismatchError` unless ``given`` has ``stored``'s structure and
    column order (compared by :meth:`Hierarchy.fingerprint`)."""
    if stored.fingerprint() != given.fingerprint():
        raise HierarchyMismatchError(
            f"{where} was trained on hierarchy {_describe(stored)}, but the hierarchy given is "
            f"{_describe(given)}. The score columns would not line up; use the checkpoint's own "
            "hierarchy (omit it) or train a new model for this one."
        )


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)``, checked to be an hmc checkpoint."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"checkpoint {str(path)!r} is a folder; give the .ckpt file in it (e.g. "
            f"{str(path / 'last.ckpt')!r})"
        )
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:  # torch's text suggests weights_only=False: unsafe
        raise ValueError(
            f"{str(path)!r} is not an hmc checkpoint: it holds Python objects that a "
            f"weights-only load refuses ({str(err).splitlines()[0][:160]}...); hmc checkpoints "
            "hold tensors and plain values only"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ValueError(
            f"cannot read checkpoint {str(path)!r}: not a complete PyTorch checkpoint file "
            f"(truncated or corrupt? {type(err).__name__}: {str(err).splitlines()[0][:120]})"
        ) from None
    if not isinstance(ckpt, dict) or CHECKPOINT_KEY not in ckpt:
        raise ValueError(
            f"{str(path)!r} is not an hmc checkpoint: it has no {CHECKPOINT_KEY!r} entry "
            "(write checkpoints with hmc.training.HMCModule, e.g. `hmc fit`)"
        )
    meta = ckpt[CHECKPOINT_KEY]
    fmt = meta.get("format")
    if fmt in _UPGRADES:
        meta.update({k: v for k, v in _UPGRADES[fmt].items() if k not in meta})
        if meta.get("score_kind") != "states":
            meta["probabilities"] = None
        meta["format"] = CHECKPOINT_FORMAT
    elif fmt != CHECKPOINT_FORMAT:
        raise ValueError(
            f"checkpoint {str(path)!r} has format {fmt!r}, but this hmc reads "
            f"{CHECKPOINT_FORMAT!r} and 'hmc-checkpoint/2'. Format 1 used other decoder keys "
            "and head layout, which cannot be converted automatically: load it with the hmc "
            "version that wrote it and save the weights as a state dict, then rebuild the model "
            "with hmc.models.build_model(hierarchy, backbone, head) and load_state_dict, or "
            "retrain"
        )
    return ckpt


class Predictor:
    """A model in eval mode with its decoder (and options) and evaluation transform.

    ``predictor(images)`` takes a [B, 3, H, W] float batch (already transformed) and returns
    :class:`hmc.decoding.Decoded`; :meth:`predict_files` reads image files and returns one
    row (dict) per image. The hierarchy is the model's (``model.hierarchy``).

    Args:
        model: a :class:`hmc.models.HierarchicalClassifier`.
        decoder: a name in :data:`hmc.decoding.DECODERS`; decoder_kwargs: its options
            (e.g. ``{"threshold": 0.7}``).
        scores: ``"sigmoid"`` | ``"logits"``, how an HRN head's scores were trained (ignored
            for other score kinds).
        probabilities: the HRN probability model (:data:`hmc.decoding.PROBABILITIES`); None =
            :func:`hmc.decoding.resolve_probabilities`'s default. Ignored for other heads.
        calibration: temperatures (:class:`hmc.calibration.Calibration`) the probability model
            applies; None = uncalibrated.
        transform: image -> [3, H, W] tensor, for :meth:`predict_files`; transform_config:
            the settings it was built from (for display).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        decoder: str = "argmax",
        decoder_kwargs: dict[str, Any] | None = None,
        scores: str = "sigmoid",
        probabilities: str | None = None,
        calibration: Calibration | None = None,
        transform: Callable[[Any], Tensor] | None = None,
        transform_config: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        check_choice("scores", scores, SCORES)
        self.model = model.eval()
        self.decoder = decoder
        self.decoder_kwargs = check_decoder(decoder, decoder_kwargs)
        self.scores = scores
        self.score_kind = str(model.head.score_kind)
        has_leaf = getattr(model.head, "leaf_classifier", None) is not None
        self.probabilities: str | None = None
        if self.score_kind == "states":
            self.probabilities = resolve_probabilities(
                _LeafFlag(has_leaf), self.score_kind, probabilities
            )
        self.calibration = calibration or Calibration()
        self.transform = transform
        self.transform_config = dict(transform_config or {})
        self.device = torch.device(device)
        self.model.to(self.device)

    @property
    def hierarchy(self) -> Hierarchy:
        return self.model.hierarchy

    @property
    def temperatures(self) -> dict[str, float]:
        """The calibration temperatures by head output name (empty = uncalibrated)."""
        return dict(self.calibration.temperatures)

    def to(self, device: str | torch.device) -> Predictor:
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    @torch.inference_mode()
    def __call__(
        self,
        images: Tensor,
        decoder: str | None = None,
        decoder_kwargs: dict[str, Any] | None = None,
    ) -> Decoded:
        """images: [B, 3, H, W] -> Decoded(nodes [B, D], probs [B, D], node_probs [B, N]).
        ``decoder`` overrides the predictor's; its options are then ``decoder_kwargs`` (else
        its defaults), never the predictor's own decoder's."""
        if decoder is None:
            decoder, options = self.decoder, {**self.decoder_kwargs, **(decoder_kwargs or {})}
        else:
            options = dict(decoder_kwargs or {})
        out = self.model(images.to(self.device))
        return decode(
            self.hierarchy,
            out,
            decoder,
            score_kind=self.score_kind,
            scores=self.scores,
            probabilities=self.probabilities,
            temperatures=self.calibration.temperatures,
            **options,
        )

    def rows(self, decoded, names: Sequence[str]) -> list[dict[str, Any]]:
        """One flat dict per sample (:func:`hmc.files.prediction_rows`): ``image``,
        ``prediction`` (deepest decoded id), ``prediction_name``, ``path``, then per level
        ``<level>`` (id, "" below an early stop), ``<level>_name`` and ``<level>_prob``."""
        h = self.hierarchy
        nodes = decoded.nodes.cpu().tolist()
        probs = decoded.probs.float().cpu().tolist()
        return prediction_rows(names, nodes, probs, h.level_names, h.nodes, h.names)

    def predict_files(
        self,
        paths: Iterable[str | Path],
        batch_size: int = 32,
        decoder: str | None = None,
        decoder_kwargs: dict[str, Any] | None = None,
        on_bad_image: str = "raise",
    ) -> list[dict[str, Any]]:
        """Rows (see :meth:`rows`) for image files and folders (searched recursively), in the
        order of the files. ``on_bad_image="skip"``: an unreadable file gets a row with empty
        predictions and its reason in an ``error`` column (``""`` for the others); ``"raise"``:
        OSError naming the file."""
        if self.transform is None:
            raise ValueError("this Predictor has no transform; pass one to read image files")
        transform = self.transform
        return predict_images(
            list_images(paths),
            lambda img: transform(img.convert("RGB")),
            lambda batch, names: self.rows(
                self(torch.stack(batch), decoder, decoder_kwargs), names
            ),
            row_columns(self.hierarchy.level_names),
            batch_size,
            on_bad_image,
        )

    def __repr__(self) -> str:
        return (
            f"Predictor({self.hierarchy!r}, backbone={self.model.config.get('backbone')!r}, "
            f"head={self.model.config.get('head')!r}, probabilities={self.probabilities!r}, "
            f"calibration={self.calibration.temperatures}, decoder={self.decoder!r}, "
            f"decoder_kwargs={self.decoder_kwargs}, transform={self.transform_config})"
        )


class _LeafFlag:
    """Stands for a head output with or without leaf logits (resolve_probabilities' default)."""

    def __init__(self, has_leaf: bool) -> None:
        self.leaf_logits = True if has_leaf else None


def load_model(
    checkpoint: str | Path,
    *,
    hierarchy: Hierarchy | str | None = None,
    device: str | torch.device = "cpu",
    decoder: str | None = None,
    decoder_kwargs: dict[str, Any] | None = None,
) -> Predictor:
    """A ready :class:`Predictor` from an hmc checkpoint alone (``weights_only=True``).

    Args:
        checkpoint: a ``.ckpt`` written by ``hmc fit`` / :class:`hmc.training.HMCModule`.
        hierarchy: optional; if given it must be the checkpoint's own hierarchy (same
            fingerprint), else :class:`HierarchyMismatchError`.
        device: where to run the model. The probability model (``probabilities``) and the
            calibration temperatures are the checkpoint's.
        decoder: override the checkpoint's decoder. decoder_kwargs: its options; by default
            the checkpoint's own options when ``decoder`` is the checkpoint's decoder (e.g. a
            threshold model keeps its threshold), else the decoder's defaults.
    """
    from hmc.models import HierarchicalClassifier

    ckpt = read_checkpoint(checkpoint)
    meta = ckpt[CHECKPOINT_KEY]
    stored = Hierarchy.from_dict(meta["hierarchy"])
    if hierarchy is not None:
        from hmc.hierarchy import load_hierarchy

        check_hierarchy(stored, load_hierarchy(hierarchy), f"checkpoint {str(checkpoint)!r}")
    model = HierarchicalClassifier.from_config(meta["model_config"])
    prefix = "model."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    model.load_state_dict(state)
    stored_decoder = meta["decoder"]
    if decoder is None or decoder == stored_decoder:
        decoder = stored_decoder
        decoder_kwargs = {**meta["decoder_kwargs"], **(decoder_kwargs or {})}
    tcfg = dict(meta.get("transform") or {})
    return Predictor(
        model,
        decoder=decoder,
        decoder_kwargs=decoder_kwargs,
        scores=meta["scores"],
        probabilities=meta["probabilities"],
        calibration=Calibration.from_dict(meta["calibration"]),
        transform=_build_eval_transform(tcfg),
        transform_config=tcfg,
        device=device,
    )


def _build_eval_transform(cfg: dict[str, Any]) -> Callable[[Any], Tensor] | None:
    """The evaluation transform from the checkpoint's ``transform`` entry, which holds the
    keyword arguments of :func:`hmc.data.transforms.build_transforms` (``train`` excluded)."""
    if not cfg:
        return None
    from hmc.data.transforms import build_transforms

    return build_transforms(**{**cfg, "train": False})
