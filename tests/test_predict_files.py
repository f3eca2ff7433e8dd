"""hmc.files, the one copy of the image listing and prediction rows both predictors use: rows
stay aligned with the input files whatever is unreadable, CSV/JSON output, and no torch."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hmc.files import (
    IMAGE_SUFFIXES,
    list_images,
    predict_images,
    prediction_rows,
    print_summary,
    row_columns,
    write_predictions,
)

ROOT = Path(__file__).resolve().parents[1]
LEVELS = ["order", "species"]
IDS = ["o1", "o2", "s1", "s2"]
NAMES = ["Order 1", "Order 2", "Species 1", "Species 2"]


def fake_predict(batch: list, names: list[str]) -> list[dict]:
    """A 'model' that predicts o1 > s<mean pixel parity>, stopping early on dark images."""
    nodes = [[0, 2 + int(x.mean()) % 2] if x.mean() > 20 else [0, -1] for x in batch]
    probs = [[0.9, 0.6] if n[1] >= 0 else [0.9, 0.0] for n in nodes]
    return prediction_rows(names, nodes, probs, LEVELS, IDS, NAMES)


def read(img) -> np.ndarray:
    return np.asarray(img.convert("L"), dtype=np.float32)


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (6, 6), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(tmp_path / "5_dark.png")
    (tmp_path / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "6.jpg").write_text("")
    (tmp_path / "notes.txt").write_text("not an image suffix: not listed")
    return tmp_path


def test_rows_stay_aligned_with_the_files_when_some_are_unreadable(folder):
    files = list_images([folder])
    assert [f.name for f in files] == ["0.png", "1.png", "2.png", "3.png", "4.png", "5_dark.png",
                                       "6.jpg"]  # fmt: skip
    rows = predict_images(files, read, fake_predict, row_columns(LEVELS), 2, "skip")
    assert [r["image"] for r in rows] == [str(f) for f in files]
    assert all(list(r) == [*row_columns(LEVELS), "error"] for r in rows)
    bad = {Path(r["image"]).name: r for r in rows if r["error"]}
    assert sorted(bad) == ["2.png", "6.jpg"]
    assert bad["2.png"]["error"].startswith("UnidentifiedImageError")
    assert all(r["order"] == "" and r["order_prob"] is None for r in bad.values())
    dark = rows[5]
    assert dark["error"] == "" and dark["path"] == "Order 1" and dark["species"] == ""
    assert dark["species_prob"] is None and dark["prediction"] == "o1"
    # A batch of bad files only (2 and 3 -> batch 2 holds 2.png and 3.png; make both bad).
    (folder / "3.png").write_bytes(b"")
    rows = predict_images(files, read, fake_predict, row_columns(LEVELS), 2, "skip")
    assert [bool(r["error"]) for r in rows] == [False, False, True, True, False, False, True]


def test_raise_names_the_file_and_a_wrong_choice_is_named(folder):
    files = list_images([folder])
    with pytest.raises(OSError, match=r"cannot read image '.*2\.png'"):
        predict_images(files, read, fake_predict, row_columns(LEVELS), 4)
    with pytest.raises(ValueError, match=r"`on_bad_image` to be one of \['raise', 'skip'\]"):
        predict_images(files, read, fake_predict, row_columns(LEVELS), 4, "ignore")


def test_csv_and_json_rows(tmp_path, capsys):
    rows = prediction_rows(["a.png"], [[1, 3]], [[0.25, 0.125]], LEVELS, IDS, NAMES)
    assert rows == [{"image": "a.png", "prediction": "s2", "prediction_name": "Species 2",
                     "path": "Order 2 > Species 2", "order": "o2", "order_name": "Order 2",
                     "order_prob": 0.25, "species": "s2", "species_name": "Species 2",
                     "species_prob": 0.125}]  # fmt: skip
    write_predictions(rows, tmp_path / "out" / "p.json")
    assert json.loads((tmp_path / "out" / "p.json").read_text()) == rows
    write_predictions(rows, tmp_path / "p.csv")
    got = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert got[0]["path"] == "Order 2 > Species 2" and got[0]["species_prob"] == "0.125"
    write_predictions(rows, None, "json")
    assert json.loads(capsys.readouterr().out) == rows
    write_predictions(rows, "-")
    assert capsys.readouterr().out.startswith("image,prediction,")
    with pytest.raises(ValueError, match=r"`format` to be one of \['csv', 'json'\]"):
        write_predictions(rows, tmp_path / "p.xml", "xml")


def test_the_summary_counts_the_unreadable_images(capsys):
    rows = [{"image": "a", "error": ""}, {"image": "b", "error": "OSError: x"}]
    print_summary(rows, "p.csv", "hmc predict")
    assert capsys.readouterr().err.splitlines() == [
        "hmc predict: 1 of 2 images could not be read (rows with an error)",
        "hmc predict: 2 images -> p.csv",
    ]
    print_summary(rows[:1], None, "hmc predict")  # all readable, to stdout: nothing to say
    assert capsys.readouterr().err == ""


def test_listing_errors_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no images"):
        list_images(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no such image file or folder"):
        list_images([tmp_path / "missing.png"])
    with pytest.raises(ValueError, match="at least one image"):
        list_images([])
    assert ".jpg" in IMAGE_SUFFIXES and all(s == s.lower() for s in IMAGE_SUFFIXES)


def test_the_torch_free_modules_import_no_torch():
    code = (
        "import sys, hmc.files, hmc.numpy_decoding, hmc.onnx_predictor\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'networkx', 'timm', 'lightning'))\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300, cwd=ROOT)
