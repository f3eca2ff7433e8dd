"""Predict with an ONNX file written by ``hmc export``, with numpy, Pillow and onnxruntime only.

No torch (nor networkx, timm, Lightning): install ``hmc`` without its dependencies (``pip
install --no-deps hmc``) next to ``numpy pillow onnxruntime`` and run ::

    python -m hmc.onnx_predictor model.onnx images/ --output preds.csv

The file is self-describing: its metadata entry ``"hmc"`` (JSON) holds the hierarchy
(``Hierarchy.to_dict()``), the decoder and its ``decoder_kwargs``, the calibration, and the
evaluation transform spelled out as resize / centre crop / mean / std. The graph itself runs the
model *and* :class:`hmc.Predictor`'s decoding (calibration included), so the decoding rules live
only in :mod:`hmc.decoding`; this module preprocesses, runs the graph and writes the same rows
as ``hmc predict``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "FORMAT",
    "IMAGE_SUFFIXES",
    "METADATA_KEY",
    "ModelMismatchError",
    "NotAnHmcModelError",
    "OnnxDecoded",
    "OnnxPredictor",
    "hierarchy_fingerprint",
    "hmc_version",
    "list_images",
    "main",
    "preprocess",
    "read_metadata",
    "write_predictions",
]

FORMAT = "hmc-onnx/1"  # bump the number when a reader of the old format would misread the file
METADATA_KEY = "hmc"
INPUT = "images"
OUTPUTS = ("nodes", "probs", "node_probs")
IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
# PIL's resampling filters by the names torchvision and timm use.
INTERPOLATIONS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


class NotAnHmcModelError(ValueError):
    """An ONNX file without hmc metadata."""


class ModelMismatchError(ValueError):
    """A file whose format version or hierarchy does not match what the caller expects."""


class OnnxDecoded(NamedTuple):
    """nodes: [B, D] int64 column per level, -1 below an early stop. probs: [B, D] float32
    probability of each chosen node (0 where -1). node_probs: [B, N] float32."""

    nodes: np.ndarray
    probs: np.ndarray
    node_probs: np.ndarray


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
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ModelMismatchError(
            f"{str(path)!r} is in format {found!r} (written by hmc "
            f"{meta.get('hmc_version') if isinstance(meta, dict) else None}), but this "
            f"predictor (hmc {hmc_version()}) reads {FORMAT!r}; use the hmc version that wrote it "
            "or export the checkpoint again with this one"
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
    batch returns :class:`OnnxDecoded`; :meth:`predict_files` reads images and returns the rows
    of ``hmc predict``.

    Args:
        path: an ``.onnx`` file written by ``hmc export``.
        hierarchy: optional; if given (an ``hmc.Hierarchy``, its ``to_dict()`` or a JSON file of
            it) it must be the file's own hierarchy, else :class:`ModelMismatchError`.
        threads: intra-op threads of ONNX Runtime (default: its own choice).
    """

    def __init__(
        self, path: str | Path, hierarchy: Any = None, *, threads: int | None = None
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.metadata = read_metadata(self.path)
        h = self.metadata["hierarchy"]
        if hierarchy is not None:
            given = _as_hierarchy_dict(hierarchy)
            if hierarchy_fingerprint(given) != self.metadata["fingerprint"]:
                raise ModelMismatchError(
                    f"ONNX model {str(self.path)!r} was exported for hierarchy "
                    f"{_describe(h)}, but the hierarchy given is {_describe(given)}. The "
                    "columns would not line up; omit the hierarchy or export a model trained "
                    "on this one."
                )
        self.level_names = tuple(h["level_names"])
        self.nodes = tuple(row[0] for row in h["nodes"])
        self.names = tuple(row[2] for row in h["nodes"])
        self.decoder = self.metadata["decoder"]
        self.decoder_kwargs = dict(self.metadata.get("decoder_kwargs") or {})
        self.transform = self.metadata["transform"]
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(self.path), options, providers=["CPUExecutionProvider"]
        )

    def __call__(self, images: np.ndarray) -> OnnxDecoded:
        """images: [B, 3, S, S] float32 -> OnnxDecoded(nodes [B, D], probs [B, D], [B, N])."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        s = int(self.transform["crop"])
        if images.ndim != 4 or images.shape[1:] != (3, s, s):
            raise ValueError(
                f"Expected images of shape [B, 3, {s}, {s}] (the exported size), but got "
                f"{list(images.shape)}"
            )
        nodes, probs, node_probs = self.session.run(list(OUTPUTS), {INPUT: images})
        return OnnxDecoded(nodes, probs, node_probs)

    def _check_decoder(self, decoder: str | None) -> None:
        if decoder is not None and decoder != self.decoder:
            raise ValueError(
                f"{str(self.path)!r} decodes with {self.decoder!r} inside its graph, but "
                f"decoder {decoder!r} was asked for; export again with "
                f"`hmc export --decoder {decoder}`"
            )

    def rows(self, decoded: OnnxDecoded, names: Sequence[str]) -> list[dict[str, Any]]:
        """One flat dict per sample, the same keys and values as :meth:`hmc.Predictor.rows`."""
        out = []
        for name, cols, ps in zip(
            names, decoded.nodes.tolist(), decoded.probs.tolist(), strict=True
        ):
            row: dict[str, Any] = {"image": name}
            chosen = [c for c in cols if c >= 0]
            row["prediction"] = self.nodes[chosen[-1]] if chosen else ""
            row["prediction_name"] = self.names[chosen[-1]] if chosen else ""
            row["path"] = " > ".join(self.names[c] for c in chosen)
            for level, c, p in zip(self.level_names, cols, ps, strict=True):
                row[level] = self.nodes[c] if c >= 0 else ""
                row[f"{level}_name"] = self.names[c] if c >= 0 else ""
                row[f"{level}_prob"] = round(float(p), 6) if c >= 0 else None
            out.append(row)
        return out

    def predict_files(
        self, paths: Iterable[str | Path], batch_size: int = 32, decoder: str | None = None
    ) -> list[dict[str, Any]]:
        """Rows (see :meth:`rows`) for image files and folders (searched recursively).
        ``decoder`` may only name the decoder exported into the graph."""
        from PIL import Image

        self._check_decoder(decoder)
        files = list_images(paths)
        rows: list[dict[str, Any]] = []
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            batch = []
            for f in chunk:
                try:
                    with Image.open(f) as img:
                        batch.append(preprocess(img, self.transform))
                except OSError as err:
                    raise OSError(f"cannot read image {str(f)!r}: {err}") from err
            rows.extend(self.rows(self(np.stack(batch)), [str(f) for f in chunk]))
        return rows

    def __repr__(self) -> str:
        return (
            f"OnnxPredictor({str(self.path)!r}, levels={list(self.level_names)}, "
            f"decoder={self.decoder!r}, image_size={self.transform['crop']})"
        )


def _describe(h: Mapping[str, Any]) -> str:
    name = (h.get("metadata") or {}).get("name")
    label = f"{name!r} " if name else ""
    return (
        f"{label}(levels {list(h['level_names'])}, {len(h['nodes'])} nodes, fingerprint "
        f"{hierarchy_fingerprint(h)})"
    )


# ------------------------------------------------------------------- files in and out
# Torch-free twins of hmc.data.list_images and hmc.predict.write_predictions (those modules
# import torch); tests/test_export.py checks that they agree.
def list_images(paths: Iterable[str | Path] | str | Path) -> list[Path]:
    """Image files given directly, or found in folders (recursively, symlinked folders not
    followed, sorted), in the given order; the same files as :func:`hmc.data.list_images`."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        p = p.expanduser()
        if p.is_dir():
            found = sorted(
                Path(dirpath) / f
                for dirpath, _, names in os.walk(p)
                for f in names
                if f.lower().endswith(IMAGE_SUFFIXES)
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
    args = parser.parse_args(argv)
    try:
        predictor = OnnxPredictor(args.model, args.hierarchy, threads=args.threads)
        rows = predictor.predict_files(args.paths, batch_size=args.batch_size)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    write_predictions(rows, args.output, args.format)
    if args.output not in (None, "-"):
        print(f"hmc.onnx_predictor: {len(rows)} images -> {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
