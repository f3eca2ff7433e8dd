"""hmc.report and ``hmc predict --report``: the HTML gallery, checked as text and as a person
sees it in a real browser (headless Chromium: the DOM it builds and a screenshot)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from cam_fixtures import fit_checkpoint, write_images
from PIL import Image

from hmc.cli import predict_main
from hmc.hierarchy import Hierarchy, UnknownLabelError
from hmc.report import read_labels, report_html, write_report

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium not found (Debian: apt-get install chromium; .ci/run does it)",
)


def birds() -> Hierarchy:
    rows = [
        ("Laridae", "Larus argentatus"),
        ("Laridae", "Larus fuscus"),
        ("Paridae", "Parus major"),
        ("Paridae", "Periparus ater"),
    ]
    ids = {
        "Laridae": "lar",
        "Paridae": "par",
        "Larus argentatus": "lar.arg",
        "Larus fuscus": "lar.fus",
        "Parus major": "par.maj",
        "Periparus ater": "par.ate",
    }
    return Hierarchy.from_paths(
        [(ids[a], ids[b]) for a, b in rows],
        names={v: k for k, v in ids.items()},
        level_names=["family", "species"],
        metadata={"name": "birds"},
    )


def photos(folder: Path, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        a = (rng.random((90, 120, 3)) * 60).astype(np.uint8)
        a[20:70, 10 + 12 * i : 50 + 12 * i] = (220, 40 * i, 60)
        path = folder / f"bird_{i}.jpg"
        Image.fromarray(a).save(path)
        out.append(str(path))
    return out


def row(image: str, family: str, fp: float, species: str, sp: float) -> dict:
    """A row as :meth:`hmc.predict.Predictor.rows` writes it (the CSV columns)."""
    return {"image": image, "family": family, "family_prob": fp, "species": species,
            "species_prob": sp}  # fmt: skip


@pytest.fixture
def gallery(tmp_path):
    """Four predictions: right, wrong species in the right family, wrong family, unlabelled;
    plus a family-level label that the prediction matches."""
    imgs = photos(tmp_path / "photos", 5)
    rows = [
        row(imgs[0], "lar", 0.9, "lar.arg", 0.8),
        row(imgs[1], "lar", 0.7, "lar.fus", 0.4),
        row(imgs[2], "par", 0.6, "par.maj", 0.5),
        row(imgs[3], "par", 0.95, "par.ate", 0.9),
        row(imgs[4], "lar", 0.55, "", None),  # the decoder stopped at the family
    ]
    labels = ["lar.arg", "lar.arg", "lar.fus", None, "lar"]
    return rows, labels


def cards(text: str) -> list[str]:
    return re.findall(r'<figure class="card[^"]*".*?</figcaption></figure>', text, re.S)


def test_mistakes_show_the_true_path_the_prediction_and_the_tree_distance(gallery):
    rows, labels = gallery
    text = report_html(birds(), rows, labels=labels)
    found = cards(text)
    assert len(found) == 5
    mistakes = [c for c in found if 'class="card mistake"' in c]
    assert len(mistakes) == 2  # rows 1 and 2; row 4's family label is matched
    assert 'true: <b class="true-path">Laridae &gt; Larus argentatus</b>' in mistakes[0]
    assert 'predicted: <span class="pred-path">Laridae &gt; Larus fuscus</span>' in mistakes[0]
    assert '<span class="distance">2</span>' in mistakes[0]  # siblings
    assert '<span class="distance">4</span>' in mistakes[1]  # across families
    assert "5 images · 4 labelled · 2 mistakes" in text
    assert 'id="mistakes-only"' in text and "<script>" in text
    assert 'style="width:90%"' in found[0] and ">0.90<" in found[0]
    assert "—" in found[4]  # no species predicted
    assert text.count("data:image/jpeg;base64,") == 5


def test_without_labels_there_is_no_filter_and_images_can_be_linked(gallery, tmp_path):
    rows, _ = gallery
    out = write_report(birds(), rows, tmp_path / "out" / "r.html", embed=False)
    text = out.read_text()
    assert "mistakes-only" not in text.split("</style>")[1] and "<script>" not in text
    assert 'src="../photos/bird_0.jpg"' in text and "base64" not in text


def test_bad_inputs_name_what_is_wrong(gallery):
    rows, labels = gallery
    with pytest.raises(ValueError, match=r"`labels` to have one entry per row \(5\), got 2"):
        report_html(birds(), rows, labels=labels[:2])
    with pytest.raises(UnknownLabelError, match="did you mean"):
        report_html(birds(), rows, labels=["lar.ar"] * 5)
    with pytest.raises(OSError, match="missing.jpg"):
        report_html(birds(), [{**rows[0], "image": "missing.jpg"}])


def test_labels_from_a_csv_by_id_or_name(tmp_path):
    imgs = photos(tmp_path, 3)
    (tmp_path / "labels.csv").write_text(
        f"path,label\n{Path(imgs[0]).name},lar.arg\n{Path(imgs[1]).name},Paridae\n"
        f"{Path(imgs[2]).name},\n"
    )
    got = read_labels(birds(), tmp_path / "labels.csv")
    h = birds()
    assert got == {str(Path(imgs[0]).resolve()): h.index("lar.arg"),
                   str(Path(imgs[1]).resolve()): h.index("par")}  # fmt: skip


# ----------------------------------------------------------------------- in a browser
def chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--user-data-dir={tmp / 'profile'}", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


@needs_chromium
def test_the_report_in_headless_chromium(gallery, tmp_path):
    rows, labels = gallery
    h = birds()
    strip = [[Image.new("RGB", (32, 32), (255, 0, 0)), Image.new("RGB", (32, 32), (0, 0, 255))]]
    out = write_report(h, rows, tmp_path / "report.html", labels=labels, cams=strip * 5)
    url = out.resolve().as_uri()

    dom = chromium("--dump-dom", url, tmp=tmp_path).stdout
    imgs = re.findall(r"<img [^>]*>", dom)
    assert len(imgs) == 5 + 5 * 2
    assert all('src="data:image/jpeg;base64,' in tag for tag in imgs)
    for name in ("Larus argentatus", "Larus fuscus", "Parus major", "Periparus ater"):
        assert name in dom
    assert re.search(r'<input type="checkbox" id="mistakes-only">', dom)
    assert dom.count('class="card mistake"') == 2
    assert "body.mistakes-only .card:not(.mistake){display:none}" in dom
    assert '<body class="mistakes-only">' not in dom
    # The filter's script runs: #mistakes opens the page with the filter on.
    filtered = chromium("--dump-dom", url + "#mistakes", tmp=tmp_path).stdout
    assert '<body class="mistakes-only">' in filtered

    shot = tmp_path / "shot.png"
    chromium(f"--screenshot={shot}", "--window-size=800,600", url, tmp=tmp_path)
    with Image.open(shot) as img:
        assert img.size == (800, 600)
        pixels = np.asarray(img.convert("RGB"), dtype=np.float32)
    assert pixels.std() > 20  # not a blank page
    # The thumbnails were drawn: many colours, not only the page's greys.
    assert len(np.unique(pixels.reshape(-1, 3)[::7].astype(np.uint8), axis=0)) > 500


# ----------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return fit_checkpoint(tmp_path_factory.mktemp("report"), steps=1)


def test_predict_writes_the_report_with_labels_and_cams(checkpoint, tmp_path):
    ckpt, root = checkpoint
    images = write_images(tmp_path / "new", per_class=1, seed=3)
    files = sorted(images.rglob("*.png"))
    lines = ["path,label"] + [
        f"{f.relative_to(images)},{f.parent.relative_to(images)}" for f in files
    ]
    (images / "labels.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "report.html"
    argv = ["--ckpt_path", str(ckpt), "--labels", str(images / "labels.csv"), "--report",
            str(out), "--report_cams", "true", "--output", str(tmp_path / "p.csv")]  # fmt: skip
    assert predict_main(argv) == 0
    text = out.read_text()
    assert len(cards(text)) == len(files) == 4
    assert text.count('<img class="cam"') == 4 * 2  # one overlay per level
    assert "4 images · 4 labelled" in text and 'id="mistakes-only"' in text
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 1 + 4
