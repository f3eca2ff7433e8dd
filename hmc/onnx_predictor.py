"""Predict with an ONNX file written by ``hmc export``, with numpy, Pillow and onnxruntime only.

No torch (nor networkx, timm, Lightning): install ``hmc`` without its dependencies (``pip
install --no-deps hmc``) next to ``numpy pillow onnxruntime`` and run ::

    python -m hmc.onnx_predictor model.onnx images/ --output preds.csv [--decoder threshold]

The file is self-describing: its metadata entry ``"hmc"`` (JSON) holds the hierarchy
(``Hierarchy.to_dict()``), the decoder and its ``decoder_kwargs``, ``score_kind``, ``scores``,
the probability model, the calibration, the evaluation transform spelled out as resize / centre
crop / mean / std, and ``decode_in_graph``. By default (``decode_in_graph`` false) the graph
outputs the head's raw outputs (``node_scores`` [B, N], and ``leaf_logits`` [B, L] where the
head has them) and :mod:`hmc.numpy_decoding` decodes them with the rules of
:mod:`hmc.decoding`, with the file's decoder or another one chosen at predict time. A file
exported with ``decode_in_graph=True`` outputs ``nodes``, ``probs`` and ``node_probs``
directly, and only its own decoder can be used. Either way this module preprocesses, runs the
graph and writes the same rows as ``hmc predict`` (with :mod:`hmc.files`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hmc.files import (
    ON_BAD_IMAGE,
    list_images,
    predict_images,
    prediction_rows,
    print_summary,
    row_columns,
    write_predictions,
)
from hmc.numpy_decoding import DECODERS, Decoded, TreePlan, check_decoder, decode

__all__ = [
    "DECODED_OUTPUTS",
    "FORMAT",
    "METADATA_KEY",
    "RAW_OUTPUTS",
    "ModelMismatchError",
    "NotAnHmcModelError",
    "OnnxPredictor",
    "hierarchy_fingerprint",
    "hmc_version",
    "list_images",
    "main",
    "preprocess",
    "read_metadata",
    "write_predictions",
]

FORMAT = "hmc-onnx/2"  # bump the number when a reader of the old format would misread the file
# Older formats read with defaults for the keys they lack (/1 always decoded in the graph).
_UPGRADES: dict[str, dict[str, Any]] = {"hmc-onnx/1": {"decode_in_graph": True}}
METADATA_KEY = "hmc"
INPUT = "images"
RAW_OUTPUTS = ("node_scores", "leaf_logits")  # leaf_logits only where the head has them
DECODED_OUTPUTS = ("nodes", "probs", "node_probs")  # decode_in_graph
# PIL's resampling filters by the names torchvision and timm use.
INTERPOLATIONS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


class NotAnHmcModelError(ValueError):
    """An ONNX file without hmc metadata."""


class ModelMismatchError(ValueError):
    """A file whose format version or hierarchy does not match what the caller expects."""


def hierarchy_fingerprint(hierarchy: Mapping[str, Any]) -> str:
    """``Hierarchy.fingerprint()`` computed from its ``to_dict()``: sha256 of the level names
    and the (node, parent) pairs in column order."""
    pairs = [[row[0], row[1]] for row in hierarchy["nodes"]]
    data = json.dumps([list(hierarchy["level_names"]), pairs])
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def _as_hierarchy_dict(hierarchy: Any) -> dict[str, Any]:
    if hasattr(hierarchy, "to_dict"):  # an hmc.Hierarchy, without importing it (torch)
        return hierarchy.to_dict()
    if isinstance(hierarchy, (str, Path)):
        with open(hierarchy, encoding="utf-8") as f:
            return json.load(f)
    if isinstance(hierarchy, Mapping):
        return dict(hierarchy)
    raise TypeError(
        "Expected argument `hierarchy` to be an hmc.Hierarchy, its to_dict() or a JSON file of "
        f"it, but got {type(hierarchy).__name__}"
    )


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``"hmc"`` metadata of an ONNX file written by ``hmc export``, checked for its format.

    Raises:
        FileNotFoundError: no such file.
        NotAnHmcModelError: an ONNX file without hmc metadata (or not ONNX at all).
        ModelMismatchError: an hmc file of another format version.
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model {str(path)!r} does not exist")
    try:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types
        raise NotAnHmcModelError(
            f"{str(path)!r} is not an ONNX model ({err}); export one with `hmc export`"
        ) from err
    return _check_metadata(session.get_modelmeta().custom_metadata_map, path)


def _check_metadata(props: Mapping[str, str], path: Path) -> dict[str, Any]:
    raw = props.get(METADATA_KEY)
    if raw is None:
        raise NotAnHmcModelError(
            f"{str(path)!r} is not an hmc model; export it with `hmc export` (its ONNX "
            f"metadata has no {METADATA_KEY!r} entry)"
        )
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as err:
        raise NotAnHmcModelError(
            f"{str(path)!r} is not an hmc model (its {METADATA_KEY!r} metadata is not JSON: "
            f"{err}); export it with `hmc export`"
        ) from err
    if isinstance(meta, dict) and meta.get("format") in _UPGRADES:
        meta = {**_UPGRADES[meta["format"]], **meta, "format": FORMAT}
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ModelMismatchError(
            f"{str(path)!r} is in format {found!r} (written by hmc "
            f"{meta.get('hmc_version') if isinstance(meta, dict) else None}), but this "
            f"predictor (hmc {hmc_version()}) reads {FORMAT!r} (and "
            f"{', '.join(map(repr, _UPGRADES))}); use the hmc version that wrote it or export "
            "the checkpoint again with this one"
        )
    stored = hierarchy_fingerprint(meta["hierarchy"])
    if stored != meta.get("fingerprint"):
        raise ModelMismatchError(
            f"{str(path)!r}: its hierarchy has fingerprint {stored}, but the metadata says "
            f"{meta.get('fingerprint')}; the file was edited or corrupted, export it again"
        )
    return meta


def hmc_version() -> str:
    """The installed hmc's version (importing ``hmc.__version__`` is not needed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hmc")
    except PackageNotFoundError:
        return "unknown"


# ------------------------------------------------------------------------ preprocessing
def preprocess(image: Any, transform: Mapping[str, Any]) -> np.ndarray:
    """A PIL image -> float32 [3, S, S], as the checkpoint's evaluation transform does it.

    transform: the metadata's ``"transform"``: ``resize`` (int), ``resize_mode``
    (``"square"``: to resize x resize; ``"shorter"``: the shorter side to resize, keeping the
    aspect ratio), ``crop`` (centre crop side S), ``interpolation`` (a PIL filter name),
    ``mean``/``std`` (3 floats each, on the 0..1 scale).
    """
    img = image.convert("RGB")
    size = int(transform["resize"])
    w, h = img.size
    if transform["resize_mode"] == "square":
        out_w, out_h = size, size
    elif w <= h:  # torchvision's shorter-side rule (int() truncates the longer side)
        out_w, out_h = size, int(size * h / w)
    else:
        out_w, out_h = int(size * w / h), size
    if (out_w, out_h) != (w, h):
        img = img.resize((out_w, out_h), INTERPOLATIONS[transform["interpolation"]])
    crop = int(transform["crop"])
    if (crop, crop) != img.size:
        top = int(round((out_h - crop) / 2.0))
        left = int(round((out_w - crop) / 2.0))
        img = img.crop((left, top, left + crop, top + crop))
    x = np.asarray(img, dtype=np.float32)  # [S, S, 3], 0..255
    mean = np.asarray(transform["mean"], dtype=np.float32)
    std = np.asarray(transform["std"], dtype=np.float32)
    x = (x / np.float32(255.0) - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1))


# -------------------------------------------------------------------------- predictor
class OnnxPredictor:
    """An exported hmc model on ONNX Runtime: ``predictor(images)`` on a [B, 3, S, S] float32
    batch returns :class:`hmc.numpy_decoding.Decoded`; :meth:`predict_files` reads images and
    returns the rows of ``hmc predict``. The ONNX twin of :func:`hmc.load_model` and the
    :class:`hmc.Predictor` it returns, with the same decoder rules.

    Args:
        path: an ``.onnx`` file written by ``hmc export``.
        hierarchy: optional; if given (an ``hmc.Hierarchy``, its ``to_dict()`` or a JSON file of
            it) it must be the file's own hierarchy, else :class:`ModelMismatchError`.
        decoder: override the file's decoder (:data:`hmc.numpy_decoding.DECODERS`);
            decoder_kwargs: its options, by default the file's own when ``decoder`` is the
            file's decoder, else the decoder's defaults. A file decoded in its graph
            (``decode_in_graph``) takes only its own decoder and options (ValueError).
        threads: intra-op threads of ONNX Runtime (default: its own choice).

    Attributes: ``decoder``, ``decoder_kwargs``, ``decode_in_graph``, ``score_kind``,
    ``scores``, ``probabilities``, ``temperatures``, ``transform``, ``metadata``.
    """

    def __init__(
        self,
        path: str | Path,
        hierarchy: Any = None,
        *,
        decoder: str | None = None,
        decoder_kwargs: dict[str, Any] | None = None,
        threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.metadata = meta = read_metadata(self.path)
        h = meta["hierarchy"]
        if hierarchy is not None:
            given = _as_hierarchy_dict(hierarchy)
            if hierarchy_fingerprint(given) != meta["fingerprint"]:
                raise ModelMismatchError(
                    f"ONNX model {str(self.path)!r} was exported for hierarchy "
                    f"{_describe(h)}, but the hierarchy given is {_describe(given)}. The "
                    "columns would not line up; omit the hierarchy or export a model trained "
                    "on this one."
                )
        self.level_names = tuple(h["level_names"])
        self.nodes = tuple(row[0] for row in h["nodes"])
        self.names = tuple(row[2] for row in h["nodes"])
        self.decode_in_graph = bool(meta["decode_in_graph"])
        stored = meta["decoder"], dict(meta.get("decoder_kwargs") or {})
        if decoder is None or decoder == stored[0]:  # load_model's rule
            decoder, decoder_kwargs = stored[0], {**stored[1], **(decoder_kwargs or {})}
        self.decoder = decoder
        self.decoder_kwargs = self._checked(decoder, decoder_kwargs)
        self.score_kind = meta.get("score_kind")
        self.scores = meta.get("scores")
        self.probabilities = meta.get("probabilities")
        self.temperatures = dict((meta.get("calibration") or {}).get("temperatures", {}))
        self.transform = meta["transform"]
        self.outputs = list(meta.get("outputs") or DECODED_OUTPUTS)
        self.plan = None if self.decode_in_graph else TreePlan(h)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(self.path), options, providers=["CPUExecutionProvider"]
        )

    def _checked(self, decoder: str, decoder_kwargs: dict[str, Any] | None) -> dict[str, Any]:
        """The decoder's options with defaults; for a file decoded in its graph, only the
        decoder and options exported into it."""
        options = check_decoder(decoder, decoder_kwargs)
        meta = self.metadata
        stored = meta["decoder"], check_decoder(meta["decoder"], meta.get("decoder_kwargs"))
        if self.decode_in_graph and (decoder, options) != stored:
            raise ValueError(
                f"{str(self.path)!r} decodes with {stored[0]!r} {stored[1]} inside its graph, "
                f"but decoder {decoder!r} {options} was asked for; export again without "
                f"--decode_in_graph to choose the decoder at predict time, or with "
                f"`hmc export --decoder {decoder}`"
            )
        return options

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The graph's outputs by name (:data:`RAW_OUTPUTS` or :data:`DECODED_OUTPUTS`) for
        images [B, 3, S, S] float32."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        s = int(self.transform["crop"])
        if images.ndim != 4 or images.shape[1:] != (3, s, s):
            raise ValueError(
                f"Expected images of shape [B, 3, {s}, {s}] (the exported size), but got "
                f"{list(images.shape)}"
            )
        return dict(zip(self.outputs, self.session.run(self.outputs, {INPUT: images}), strict=True))

    def _resolve(
        self, decoder: str | None, decoder_kwargs: dict[str, Any] | None
    ) -> tuple[str, dict[str, Any]]:
        # hmc.Predictor.__call__'s rule: another decoder starts from its defaults.
        if decoder is None:
            decoder, decoder_kwargs = (
                self.decoder,
                {**self.decoder_kwargs, **(decoder_kwargs or {})},
            )
        return decoder, self._checked(decoder, decoder_kwargs)

    def __call__(
        self,
        images: np.ndarray,
        decoder: str | None = None,
        decoder_kwargs: dict[str, Any] | None = None,
    ) -> Decoded:
        """images: [B, 3, S, S] float32 -> Decoded(nodes [B, D], probs [B, D], node_probs
        [B, N]). ``decoder`` overrides the predictor's; its options are then
        ``decoder_kwargs`` (else its defaults), as in :meth:`hmc.Predictor.__call__`."""
        decoder, options = self._resolve(decoder, decoder_kwargs)
        out = self.run(images)
        if self.decode_in_graph:
            return Decoded(out["nodes"], out["probs"], out["node_probs"])
        return decode(
            self.plan,
            out["node_scores"],
            out.get("leaf_logits"),
            decoder,
            score_kind=self.score_kind,
            scores=self.scores,
            probabilities=self.probabilities,
            temperatures=self.temperatures,
            **options,
        )

    def rows(self, decoded: Decoded, names: Sequence[str]) -> list[dict[str, Any]]:
        """One flat dict per sample, the same keys and values as :meth:`hmc.Predictor.rows`."""
        nodes, probs = decoded.nodes.tolist(), decoded.probs.tolist()
        return prediction_rows(names, nodes, probs, self.level_names, self.nodes, self.names)

    def predict_files(
        self,
        paths: Iterable[str | Path],
        batch_size: int = 32,
        decoder: str | None = None,
        decoder_kwargs: dict[str, Any] | None = None,
        on_bad_image: str = "raise",
    ) -> list[dict[str, Any]]:
        """Rows (see :meth:`rows`) for image files and folders (searched recursively), in the
        order of the files, as :meth:`hmc.Predictor.predict_files` (``on_bad_image="skip"``:
        an unreadable file gets a row with empty predictions and an ``error`` column)."""
        self._resolve(decoder, decoder_kwargs)  # a wrong decoder fails before any image is read
        return predict_images(
            list_images(paths),
            lambda img: preprocess(img, self.transform),
            lambda batch, names: self.rows(self(np.stack(batch), decoder, decoder_kwargs), names),
            row_columns(self.level_names),
            batch_size,
            on_bad_image,
        )

    def __repr__(self) -> str:
        return (
            f"OnnxPredictor({str(self.path)!r}, levels={list(self.level_names)}, "
            f"decoder={self.decoder!r}, decoder_kwargs={self.decoder_kwargs}, "
            f"decode_in_graph={self.decode_in_graph}, image_size={self.transform['crop']})"
        )


def _describe(h: Mapping[str, Any]) -> str:
    name = (h.get("metadata") or {}).get("name")
    label = f"{name!r} " if name else ""
    return (
        f"{label}(levels {list(h['level_names'])}, {len(h['nodes'])} nodes, fingerprint "
        f"{hierarchy_fingerprint(h)})"
    )


# ------------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hmc.onnx_predictor model.onnx IMAGES... [--output p.csv]``; the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m hmc.onnx_predictor",
        description="Predict images with an ONNX file from `hmc export` (no PyTorch needed).",
    )
    parser.add_argument("model", help="an .onnx file written by `hmc export`")
    parser.add_argument("paths", nargs="+", help="image files and/or folders")
    parser.add_argument("--output", default=None, help="CSV/JSON file (default stdout)")
    parser.add_argument("--format", choices=["csv", "json"], default=None)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads")
    parser.add_argument("--hierarchy", default=None, help="a to_dict() JSON file to check")
    parser.add_argument(
        "--decoder",
        default=None,
        help=f"one of {list(DECODERS)}; default: the file's",
    )
    parser.add_argument(
        "--decoder_kwargs", type=json.loads, default=None, help="JSON, e.g. '{\"threshold\": 0.7}'"
    )
    parser.add_argument(
        "--on_bad_image",
        choices=ON_BAD_IMAGE,
        default="raise",
        help="skip: an unreadable image gets a row with an `error` column and empty predictions",
    )
    args = parser.parse_args(argv)
    try:
        predictor = OnnxPredictor(
            args.model,
            args.hierarchy,
            decoder=args.decoder,
            decoder_kwargs=args.decoder_kwargs,
            threads=args.threads,
        )
        rows = predictor.predict_files(args.paths, args.batch_size, on_bad_image=args.on_bad_image)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    write_predictions(rows, args.output, args.format)
    print_summary(rows, args.output, "hmc.onnx_predictor")
    return 0


if __name__ == "__main__":
    sys.exit(main())
