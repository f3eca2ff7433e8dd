"""Predict from a checkpoint alone: :func:`load_model` and the :class:`Predictor` it returns.

Plain PyTorch (no Lightning import): a checkpoint written by :class:`hmc.training.HMCModule` carries
``checkpoint["hmc"] = {"hierarchy", "model_config", "decoder", "transform", ...}``, so the model,
its label tree, the decoder and the evaluation transform are rebuilt from that one file, loaded
with ``torch.load(weights_only=True)``. ``hmc predict`` (see :mod:`hmc.cli`) is built on this.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hmc.hierarchy import Hierarchy, HierarchyError

__all__ = [
    "CHECKPOINT_KEY",
    "IMAGE_SUFFIXES",
    "HierarchyMismatchError",
    "Predictor",
    "check_hierarchy",
    "list_images",
    "load_model",
    "read_checkpoint",
    "write_predictions",
]

CHECKPOINT_KEY = "hmc"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


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
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or CHECKPOINT_KEY not in ckpt:
        raise ValueError(
            f"{str(path)!r} is not an hmc checkpoint: it has no {CHECKPOINT_KEY!r} entry "
            "(write checkpoints with hmc.training.HMCModule, e.g. `hmc fit`)"
        )
    return ckpt


class Predictor:
    """A model in eval mode with its hierarchy, decoder and evaluation transform.

    ``predictor(images)`` takes a [B, 3, H, W] float batch (already transformed) and returns
    :class:`hmc.decoding.Decoded`; :meth:`predict_files` reads image files and returns one
    row (dict) per image.
    """

    def __init__(
        self,
        model: nn.Module,
        hierarchy: Hierarchy,
        *,
        decoder: str = "argmax",
        scores: str = "sigmoid",
        transform: Callable[[Any], Tensor] | None = None,
        transform_config: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.model = model.eval()
        self.hierarchy = hierarchy
        self.decoder = decoder
        self.scores = scores
        self.kind = str(model.head.score_kind)
        self.transform = transform
        self.transform_config = dict(transform_config or {})
        self.device = torch.device(device)
        self.model.to(self.device)

    def to(self, device: str | torch.device) -> Predictor:
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    @torch.inference_mode()
    def __call__(self, images: Tensor, method: str | None = None):
        """images: [B, 3, H, W] -> Decoded(nodes [B, D], probs [B, D], node_probs [B, N])."""
        from hmc.decoding import decode

        out = self.model(images.to(self.device))
        return decode(
            self.hierarchy,
            out.node_scores.float(),
            method or self.decoder,
            kind=self.kind,
            scores=self.scores,
        )

    def rows(self, decoded, names: Sequence[str]) -> list[dict[str, Any]]:
        """One flat dict per sample: ``image``, ``prediction`` (deepest decoded id),
        ``prediction_name``, ``path`` (display names joined by " > "), then per level
        ``<level>`` (id, "" below an early stop), ``<level>_name`` and ``<level>_prob``."""
        h = self.hierarchy
        nodes = decoded.nodes.cpu().tolist()
        probs = decoded.probs.float().cpu().tolist()
        out = []
        for name, cols, ps in zip(names, nodes, probs, strict=True):
            row: dict[str, Any] = {"image": name}
            chosen = [c for c in cols if c >= 0]
            row["prediction"] = h.nodes[chosen[-1]] if chosen else ""
            row["prediction_name"] = h.name(chosen[-1]) if chosen else ""
            row["path"] = " > ".join(h.name(c) for c in chosen)
            for level, c, p in zip(h.level_names, cols, ps, strict=True):
                row[level] = h.nodes[c] if c >= 0 else ""
                row[f"{level}_name"] = h.name(c) if c >= 0 else ""
                row[f"{level}_prob"] = round(float(p), 6) if c >= 0 else None
            out.append(row)
        return out

    def predict_files(
        self, paths: Iterable[str | Path], batch_size: int = 32, method: str | None = None
    ) -> list[dict[str, Any]]:
        """Rows (see :meth:`rows`) for image files and folders (searched recursively)."""
        from PIL import Image

        if self.transform is None:
            raise ValueError("this Predictor has no transform; pass one to read image files")
        files = list_images(paths)
        rows: list[dict[str, Any]] = []
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            batch = []
            for f in chunk:
                try:
                    with Image.open(f) as img:
                        batch.append(self.transform(img.convert("RGB")))
                except OSError as err:
                    raise OSError(f"cannot read image {str(f)!r}: {err}") from err
            decoded = self(torch.stack(batch), method=method)
            rows.extend(self.rows(decoded, [str(f) for f in chunk]))
        return rows

    def __repr__(self) -> str:
        return (
            f"Predictor({self.hierarchy!r}, backbone={self.model.config.get('backbone')!r}, "
            f"head={self.model.config.get('head')!r}, decoder={self.decoder!r}, "
            f"transform={self.transform_config})"
        )


def load_model(
    checkpoint: str | Path,
    hierarchy: Hierarchy | str | None = None,
    *,
    device: str | torch.device = "cpu",
    decoder: str | None = None,
) -> Predictor:
    """A ready :class:`Predictor` from an hmc checkpoint alone (``weights_only=True``).

    Args:
        checkpoint: a ``.ckpt`` written by ``hmc fit`` / :class:`hmc.training.HMCModule`.
        hierarchy: optional; if given it must be the checkpoint's own hierarchy (same
            fingerprint), else :class:`HierarchyMismatchError`.
        device: where to run the model.
        decoder: override the decoding method stored in the checkpoint.
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
    dec = dict(meta.get("decoder") or {})
    tcfg = dict(meta.get("transform") or {})
    return Predictor(
        model,
        stored,
        decoder=decoder or dec.get("method", "argmax"),
        scores=dec.get("scores", "sigmoid"),
        transform=_build_eval_transform(tcfg),
        transform_config=tcfg,
        device=device,
    )


def _build_eval_transform(cfg: dict[str, Any]) -> Callable[[Any], Tensor] | None:
    if not cfg:
        return None
    from hmc.data.transforms import build_transforms

    return build_transforms(
        cfg.get("preset", "imagenet"),
        train=False,
        image_size=cfg.get("image_size"),
        data_config=cfg.get("data_config"),
    )


def list_images(paths: Iterable[str | Path] | str | Path) -> list[Path]:
    """Image files given directly or found (recursively, sorted) in folders."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(
                f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
            )
            if not found:
                raise FileNotFoundError(
                    f"folder {str(p)!r} holds no images (looked for {list(IMAGE_SUFFIXES)})"
                )
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"no such image file or folder: {str(p)!r}")
    if not files:
        raise ValueError("Expected at least one image file or folder, but got none")
    return files


def write_predictions(
    rows: Sequence[dict[str, Any]], output: str | Path | None, format: str | None = None
) -> None:
    """Write rows as CSV or JSON (a list of objects); the format defaults to the file suffix,
    CSV for stdout (``output`` None or ``"-"``)."""
    to_stdout = output is None or str(output) == "-"
    if format is None:
        format = "json" if not to_stdout and str(output).lower().endswith(".json") else "csv"
    if format not in ("csv", "json"):
        raise ValueError(
            f"Expected argument `format` to be one of ['csv', 'json'], but got {format!r}"
        )
    buf = io.StringIO()
    if format == "json":
        json.dump(list(rows), buf, indent=1, ensure_ascii=False)
        buf.write("\n")
    else:
        fields = list(rows[0]) if rows else ["image"]
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    if to_stdout:
        sys.stdout.write(buf.getvalue())
    else:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(buf.getvalue(), encoding="utf-8")
