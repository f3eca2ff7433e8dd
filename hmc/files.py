"""Image files in, prediction rows out: the one copy shared by :mod:`hmc.predict` (PyTorch),
:mod:`hmc.onnx_predictor` (no torch) and the datasets' folder searches.

Standard library only (Pillow is imported where images are opened), so the torch-free
predictor can use it: :func:`list_images` (files and folders, searched recursively),
:func:`predict_images` (batches, ``on_bad_image``, one row per file in input order),
:func:`prediction_rows` (the row of each decoded sample) and :func:`write_predictions` (CSV or
JSON), :func:`print_summary` (the lines a command prints after writing them).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "IMAGE_SUFFIXES",
    "ON_BAD_IMAGE",
    "image_files",
    "list_images",
    "prediction_rows",
    "predict_images",
    "print_summary",
    "row_columns",
    "write_predictions",
]

#: File suffixes (lower case) read as images by every folder search: datasets and ``hmc predict``.
IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
#: What :func:`predict_images` does with an unreadable image.
ON_BAD_IMAGE = ("raise", "skip")


def _check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    # hmc.checks.check_choice's message; hmc.checks imports torch.
    if value not in choices:
        raise ValueError(
            f"Expected argument `{name}` to be one of {list(choices)}, but got {value!r}"
        )


# --------------------------------------------------------------------- images
def image_files(folder: Path, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[Path]:
    """Image files below ``folder``, recursively (symlinked folders not followed), sorted."""
    suffixes = tuple(s.lower() for s in suffixes)
    out = []
    for dirpath, _, filenames in os.walk(folder):
        out.extend(Path(dirpath) / f for f in filenames if f.lower().endswith(suffixes))
    return sorted(out)


def list_images(
    paths: Iterable[str | Path] | str | Path, suffixes: Sequence[str] = IMAGE_SUFFIXES
) -> list[Path]:
    """Image files given directly, or found in folders by :func:`image_files`, in the given
    order. The one lister behind ``HMCDataModule(predict_paths=...)`` and ``hmc predict``."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        p = p.expanduser()
        if p.is_dir():
            found = image_files(p, suffixes)
            if not found:
                raise FileNotFoundError(
                    f"folder {str(p)!r} holds no images (looked for {list(suffixes)})"
                )
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"no such image file or folder: {str(p)!r}")
    if not files:
        raise ValueError("Expected at least one image file or folder, but got none")
    return files


# ----------------------------------------------------------------------- rows
def row_columns(level_names: Sequence[str]) -> list[str]:
    """The keys of a :func:`prediction_rows` row, in order."""
    keys = ["image", "prediction", "prediction_name", "path"]
    for level in level_names:
        keys += [level, f"{level}_name", f"{level}_prob"]
    return keys


def prediction_rows(
    images: Sequence[str],
    nodes: Sequence[Sequence[int]],
    probs: Sequence[Sequence[float]],
    level_names: Sequence[str],
    node_ids: Sequence[Any],
    node_names: Sequence[str],
) -> list[dict[str, Any]]:
    """One flat dict per sample: ``image``, ``prediction`` (deepest decoded id),
    ``prediction_name``, ``path`` (display names joined by " > "), then per level
    ``<level>`` (id, "" below an early stop), ``<level>_name`` and ``<level>_prob``.

    nodes, probs: B lists of D decoded columns (-1 below a stop) and their probabilities;
    node_ids, node_names: the hierarchy's ids and display names in column order.
    """
    out = []
    for image, cols, ps in zip(images, nodes, probs, strict=True):
        row: dict[str, Any] = {"image": image}
        chosen = [c for c in cols if c >= 0]
        row["prediction"] = node_ids[chosen[-1]] if chosen else ""
        row["prediction_name"] = node_names[chosen[-1]] if chosen else ""
        row["path"] = " > ".join(node_names[c] for c in chosen)
        for level, c, p in zip(level_names, cols, ps, strict=True):
            row[level] = node_ids[c] if c >= 0 else ""
            row[f"{level}_name"] = node_names[c] if c >= 0 else ""
            row[f"{level}_prob"] = round(float(p), 6) if c >= 0 else None
        out.append(row)
    return out


def predict_images(
    files: Sequence[Path],
    read: Callable[[Any], Any],
    predict: Callable[[list[Any], list[str]], list[dict[str, Any]]],
    columns: Sequence[str],
    batch_size: int = 32,
    on_bad_image: str = "raise",
) -> list[dict[str, Any]]:
    """One row per file, in the order of ``files``, predicted ``batch_size`` files at a time.

    read: an open PIL image -> one model input; predict: (inputs, file names) -> their rows;
    columns: the keys of a row (:func:`row_columns`). ``on_bad_image="raise"``: an unreadable
    file raises OSError naming it. ``"skip"``: it gets a row with the same columns, empty
    (probabilities None), and its reason in an ``error`` column (``""`` in the other rows).
    """
    from PIL import Image

    _check_choice("on_bad_image", on_bad_image, ON_BAD_IMAGE)
    unreadable = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
    rows: list[dict[str, Any]] = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        batch, errors = [], {}
        for i, f in enumerate(chunk):
            try:
                with Image.open(f) as img:
                    batch.append(read(img))
            except unreadable as err:
                if on_bad_image == "raise":
                    raise OSError(f"cannot read image {str(f)!r}: {err}") from err
                errors[i] = f"{type(err).__name__}: {err}"
        good = [str(f) for i, f in enumerate(chunk) if i not in errors]
        done = iter(predict(batch, good) if batch else [])
        for i, f in enumerate(chunk):
            if i in errors:
                empty = {k: None if k.endswith("_prob") else "" for k in columns}
                rows.append({**empty, "image": str(f), "error": errors[i]})
            elif on_bad_image == "raise":
                rows.append(next(done))
            else:
                rows.append({**next(done), "error": ""})
    return rows


def write_predictions(
    rows: Sequence[dict[str, Any]], output: str | Path | None, format: str | None = None
) -> None:
    """Write rows as CSV or JSON (a list of objects); the format defaults to the file suffix,
    CSV for stdout (``output`` None or ``"-"``)."""
    to_stdout = output is None or str(output) == "-"
    if format is None:
        format = "json" if not to_stdout and str(output).lower().endswith(".json") else "csv"
    _check_choice("format", format, ("csv", "json"))
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


def print_summary(rows: Sequence[dict[str, Any]], output: str | Path | None, prog: str) -> None:
    """The stderr lines after writing ``rows``: how many images could not be read (rows with an
    ``error``), and where the rows went (unless stdout)."""
    bad = sum(1 for r in rows if r.get("error"))
    if bad:
        print(
            f"{prog}: {bad} of {len(rows)} images could not be read (rows with an error)",
            file=sys.stderr,
        )
    if output not in (None, "-"):
        print(f"{prog}: {len(rows)} images -> {output}", file=sys.stderr)
