"""Bad inputs a new user gives hmc, one parametrised table: each case names the message fragment
that a person needs to fix it, and a CLI case prints one ``error:`` line, never a traceback.

Everything runs in-process (``hmc.cli.main``) on tiny real fixtures in each format's own
layout: a two-level ``.tree`` file, a CSV image dataset, and one checkpoint written by a real
``hmc fit`` of one epoch.
"""

from __future__ import annotations

import pickle
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from hmc.cli import main

TREE = (
    "# hmc-hierarchy 1\n@levels\tcoarse\tfine\n"
    "a\t\tA\nb\t\tB\na1\ta\tA one\na2\ta\tA two\nb1\tb\tB one\n"
)
OTHER_TREE = "# hmc-hierarchy 1\n@levels\tcoarse\tfine\nx\t\tX\ny\t\tY\nx1\tx\tX1\ny1\ty\tY1\n"


@dataclass
class Env:
    dir: Path
    tree: Path
    data: Path  # a `csv` dataset root: train.csv + images/
    images: Path
    config: Path  # the fit config of the checkpoint below
    ckpt: Path

    def write(self, name: str, text: str | bytes) -> str:
        path = self.dir / "cases" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return str(path)


def run(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """``hmc ARGS`` in-process: (exit code, stderr + stdout)."""
    with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit) as info:
        mp.setattr(sys, "argv", ["hmc"])  # LightningCLI warns if both argv and args are given
        main(args)
    captured = capsys.readouterr()
    code = info.value.code
    return (0 if code is None else int(code)), captured.err + captured.out


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("bad")
    tree = d / "h.tree"
    tree.write_text(TREE, encoding="utf-8")
    images = d / "data" / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["path,label"]
    for i in range(12):
        pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{i}.png")
        rows.append(f"images/{i}.png,{['a1', 'a2', 'b1'][i % 3]}")
    (d / "data" / "train.csv").write_text("\n".join(rows) + "\n")
    config = d / "fit.yaml"
    config.write_text(
        f"""seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  max_epochs: 1
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {d}/run
checkpoint:
  dirpath: {d}/run/checkpoints
  filename: last
  enable_version_counter: false
model:
  backbone: test_resnet
  head: hrn
  head_kwargs: {{mid_channels: 8, block_channels: 8, hidden: 8, feature_dim: 8}}
data:
  dataset: csv
  root: {d}/data
  hierarchy: {tree}
  batch_size: 4
  num_workers: 0
  image_size: 16
  preset: small
  val_fraction: 0.25
"""
    )
    with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit) as info:
        mp.setattr(sys, "argv", ["hmc"])
        main(["fit", "--config", str(config)])
    assert info.value.code in (None, 0)
    ckpt = d / "run" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return Env(d, tree, d / "data", images, config, ckpt)


# ------------------------------------------------------------------------------- the table
# A CLI case: (id, env -> argv, fragment, exit code). Fragments are what a person needs to
# fix the input: the file and line, the option, the value, the alternatives.
CliCase = tuple[str, Callable[[Env], list[str]], str, int]


def hv(name: str, text: str | bytes) -> Callable[[Env], list[str]]:
    """``hmc hierarchy validate`` on a file with this content."""
    return lambda e: ["hierarchy", "validate", e.write(name, text)]


M = "# hmc-hierarchy 1\n@levels\tc\tf\n"
HIERARCHY: list[CliCase] = [
    ("tree-malformed-row", hv("r.tree", M + "a\n"), "r.tree:3: malformed row", 1),
    ("tree-duplicate-id", hv("d.tree", M + "a\t\tA\na\t\tA2\n"), "d.tree:4: duplicate id 'a'", 1),
    ("tree-unknown-parent", hv("p.tree", M + "a\t\tA\nb\tzz\tB\n"), "zz", 1),
    ("tree-empty-id", hv("e.tree", M + "\t\tA\n"), "empty node id", 1),
    ("tree-no-nodes", hv("n.tree", M), "no nodes", 1),
    ("tree-bad-attribute", hv("a.tree", M + "a\t\tA\tcolor\n"), "is not key=value", 1),
    ("tree-attribute-twice", hv("t.tree", M + "a\t\tA\tk=1\tk=2\n"), "given twice", 1),
    ("tree-empty-level", hv("l.tree", "# hmc-hierarchy 1\n@levels\tc\t\n"), "empty level", 1),
    ("tree-metadata-no-key", hv("k.tree", M + "@\n"), "metadata line without a key", 1),
    (
        "tree-latin1",
        hv("latin.tree", (M + "a\t\tCaf\xe9\n").encode("latin1")),
        "latin.tree:3: not UTF-8",
        1,
    ),
    ("txt-unknown-format", hv("list.txt", "1 Phoebastria\n"), "unknown hierarchy format", 1),
    ("unknown-suffix", hv("h.xml", "<tree/>\n"), "unknown hierarchy format '.xml'", 1),
    ("edges-swapped", hv("sw.csv", "child,parent\na,\nb,a\n"), "'parent,child[,name]'", 1),
    ("edges-no-child", hv("nc.csv", "parent,name\n,a\n"), "in this order", 1),
    ("edges-empty-child", hv("ec.csv", "parent,child\na,\n"), "ec.csv:2: empty parent or child", 1),
    ("paths-empty-column", hv("pc.csv", "order,\nA,a\n"), "empty column name", 1),
    ("paths-hole", hv("ph.csv", "order,family,species\nA,,s\n"), "empty cell inside", 1),
    ("json-invalid", hv("j.json", "{nodes: [}\n"), "j.json:1: invalid JSON", 1),
    ("json-no-nodes", hv("n.json", '{"links": []}\n'), "no 'nodes' key", 1),
    (
        "missing-file",
        lambda e: ["hierarchy", "validate", str(e.dir / "none.tree")],
        "an existing path",
        1,
    ),
    ("folder-not-nabirds", lambda e: ["hierarchy", "validate", str(e.dir)], "NABirds", 1),
    ("shipped-typo", lambda e: ["hierarchy", "show", "cub2000"], "did you mean", 1),
]


def fit(*extra: str) -> Callable[[Env], list[str]]:
    """``hmc fit`` of the fixture's config into a scratch folder (never the checkpoint's)."""
    return lambda e: ["fit", *scratch(e), *extra]


def scratch(e: Env) -> list[str]:
    out = e.dir / "scratch"
    return ["--config", str(e.config), "--trainer.default_root_dir", str(out),
            "--checkpoint.dirpath", str(out / "checkpoints")]  # fmt: skip


CONFIG: list[CliCase] = [
    ("negative-batch-size", fit("--data.batch_size", "-3"), "`batch_size` to be >= 1", 1),
    ("unknown-backbone", fit("--model.backbone", "nosuchnet"), "unknown timm backbone", 1),
    ("negative-lr", fit("--model.lr", "-1"), "`lr` (the head learning rate)", 1),
    ("negative-backbone-lr", fit("--model.backbone_lr", "-0.5"), "`backbone_lr` (the backbone", 1),
    (
        "flat-with-hrn-kwargs",
        fit("--model.head", "flat"),
        "do not apply to head 'flat'",
        1,
    ),
    ("unknown-head", fit("--model.head", "hrnn"), "hrnn", 1),
    ("unknown-dataset", fit("--data.dataset", "cub"), "`dataset` to be one of", 1),
    ("key-typo", fit("--data.batch_sise", "4"), "Did you mean 'data.batch_size'", 2),
    ("val-fraction", fit("--data.val_fraction", "1.5"), "`val_fraction` to be in [0, 1)", 1),
    ("bad-optimizer", fit("--model.optimizer", "adamw2"), "`optimizer` to be one of", 1),
    ("bad-scheduler", fit("--model.scheduler", "step"), "`scheduler` to be one of", 1),
    ("bad-decoder", fit("--model.decoder", "beam"), "`decoder` to be one of", 1),
    ("negative-head-only", fit("--model.head_only_epochs", "-1"), "`head_only_epochs`", 1),
    ("bad-preset", fit("--data.preset", "huge"), "`preset` to be one of", 1),
    ("bad-on-bad-sample", fit("--data.on_bad_sample", "drop"), "`on_bad_sample`", 1),
    ("no-gpu", fit("--trainer.accelerator", "gpu"), "gpu", 1),
    (
        "missing-data-root",
        lambda e: fit("--data.root", str(e.dir / "nodata"))(e),
        "nodata",
        1,
    ),
    ("bad-relabel-ratio", fit("--data.relabel.ratio", "-0.1"), "ratio", 1),
]


def stage(name: str, *extra: str) -> Callable[[Env], list[str]]:
    return lambda e: [name, *scratch(e), *extra]


def junk(e: Env) -> str:
    return e.write("junk.ckpt", b"PK\x03\x04" + b"garbage" * 20)


def truncated(e: Env) -> str:
    data = e.ckpt.read_bytes()
    return e.write("truncated.ckpt", data[: len(data) // 2])


def plain_torch(e: Env) -> str:
    path = e.dir / "cases" / "plain.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}}, path)
    return str(path)


def pickled_object(e: Env) -> str:
    path = e.dir / "cases" / "object.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"hmc": Path("x")}, path)  # a Python object a weights-only load refuses
    return str(path)


CHECKPOINT: list[CliCase] = [
    ("test-without-ckpt", stage("test", "--checkpoint.dirpath", "nowhere"), "--ckpt_path", 1),
    ("validate-without-ckpt", stage("validate"), "evaluates a trained model", 1),
    (
        "test-last-missing",
        lambda e: stage("test", "--ckpt_path", "last", "--checkpoint.dirpath", str(e.dir / "z"))(e),
        "no last checkpoint in",
        1,
    ),
    (
        "validate-last-missing",
        lambda e: stage(
            "validate", "--ckpt_path", "last", "--checkpoint.dirpath", str(e.dir / "z")
        )(e),
        "no last checkpoint in",
        1,
    ),
    ("test-folder", lambda e: stage("test", "--ckpt_path", str(e.dir))(e), "is a folder", 1),
    ("test-junk", lambda e: stage("test", "--ckpt_path", junk(e))(e), "junk.ckpt", 1),
    (
        "test-truncated",
        lambda e: stage("test", "--ckpt_path", truncated(e))(e),
        "truncated.ckpt': not a complete PyTorch checkpoint",
        1,
    ),
    ("test-not-hmc", lambda e: stage("test", "--ckpt_path", plain_torch(e))(e), "not an hmc", 1),
    (
        "test-pickled-object",
        lambda e: stage("test", "--ckpt_path", pickled_object(e))(e),
        "object.ckpt' is not an hmc checkpoint",
        1,
    ),
    ("fit-junk", lambda e: stage("fit", "--ckpt_path", junk(e))(e), "junk.ckpt", 1),
    (
        "resume-changed-head",
        lambda e: stage("fit", "--ckpt_path", str(e.ckpt), "--model.head", "leaf")(e),
        "model.head: checkpoint 'hrn', config 'leaf'",
        1,
    ),
    (
        "resume-changed-lr",
        lambda e: stage("fit", "--ckpt_path", str(e.ckpt), "--model.lr", "0.5")(e),
        "model.lr: checkpoint 0.002, config 0.5",
        1,
    ),
    (
        "predict-folder",
        lambda e: ["predict", "--ckpt_path", str(e.dir), str(e.images)],
        "is a folder",
        1,
    ),
    (
        "predict-truncated",
        lambda e: ["predict", "--ckpt_path", truncated(e), str(e.images)],
        "truncated.ckpt': not a complete",
        1,
    ),
    (
        "predict-cuda",
        lambda e: ["predict", "--ckpt_path", str(e.ckpt), str(e.images), "--device", "cuda"],
        "CUDA is not available",
        1,
    ),
    ("export-junk", lambda e: ["export", "--ckpt_path", junk(e), "--output", "m.onnx"], "junk", 1),
    ("explain-junk", lambda e: ["explain", "--ckpt_path", junk(e), str(e.images)], "junk", 1),
]


def predict(*extra: str) -> Callable[[Env], list[str]]:
    return lambda e: ["predict", "--ckpt_path", str(e.ckpt), *extra]


def broken_image(e: Env) -> str:
    return e.write("broken/bad.png", b"\x89PNG\r\n\x1a\n not really")


PREDICT: list[CliCase] = [
    ("predict-no-paths", predict(), "--data.predict_paths", 2),
    ("predict-no-model", lambda e: ["predict", str(e.images)], "give one of --ckpt_path", 2),
    (
        "predict-missing-image",
        lambda e: predict(str(e.dir / "none.png"))(e),
        "none.png",
        1,
    ),
    ("predict-broken-image", lambda e: predict(broken_image(e))(e), "cannot read image", 1),
    (
        "predict-bad-on-bad-image",
        lambda e: predict(str(e.images), "--on_bad_image", "ignore")(e),
        "on_bad_image",
        2,
    ),
    ("predict-bad-format", lambda e: predict(str(e.images), "--format", "xml")(e), "format", 2),
    (
        "predict-bad-decoder",
        lambda e: predict(str(e.images), "--decoder", "beam")(e),
        "`decoder` to be one of",
        1,
    ),
    (
        "predict-other-hierarchy",
        lambda e: predict(str(e.images), "--hierarchy", e.write("o.tree", OTHER_TREE))(e),
        "was trained on hierarchy",
        1,
    ),
    (
        "predict-onnx-with-report",
        lambda e: ["predict", "--model", "m.onnx", str(e.images), "--report", "r.html"],
        "need --ckpt_path",
        2,
    ),
]

COMMAND: list[CliCase] = [
    ("unknown-command", lambda e: ["fitt"], "Did you mean 'fit'?", 2),
    ("unknown-command-hierarchy", lambda e: ["hierachy"], "Did you mean 'hierarchy'?", 2),
    ("unknown-command-lists-all", lambda e: ["xyz"], "export, hierarchy", 2),
]

CLI_CASES = HIERARCHY + CONFIG + CHECKPOINT + PREDICT + COMMAND


@pytest.mark.parametrize(("args", "fragment", "code"), [c[1:] for c in CLI_CASES],
                         ids=[c[0] for c in CLI_CASES])  # fmt: skip
def test_cli_bad_input(env, capsys, args, fragment, code, monkeypatch):
    monkeypatch.chdir(env.dir)
    got, text = run(args(env), capsys)
    assert got == code, text
    assert fragment in text, text
    assert "Traceback" not in text
    assert "weights_only=False" not in text


# --------------------------------------------------------------------------- Python API
def api_load_folder(e: Env) -> Any:
    from hmc import load_model

    return load_model(e.dir)


def api_build_unknown_head(e: Env) -> Any:
    from hmc import Hierarchy, build_model

    return build_model(Hierarchy.from_file(e.tree), "test_resnet", "hrnn")


def api_build_foreign_kwargs(e: Env) -> Any:
    from hmc import Hierarchy, build_model

    return build_model(
        Hierarchy.from_file(e.tree), "test_resnet", "leaf", head_kwargs={"hidden": 4}
    )


def api_module_lr(e: Env) -> Any:
    from hmc import HMCModule

    return HMCModule(str(e.tree), backbone="test_resnet", backbone_lr=-0.1)


def api_skip_choice(e: Env) -> Any:
    from hmc import load_model

    return load_model(e.ckpt).predict_files([e.images], on_bad_image="ignore")


def api_unknown_shipped(e: Env) -> Any:
    from hmc import load_hierarchy

    return load_hierarchy("cub2000")


def csv_dataset(text: str) -> Callable[[Env], Any]:
    def build(e: Env) -> Any:
        from hmc.data import CSVDataset

        path = e.data / f"case{abs(hash(text))}.csv"
        path.write_text(text)
        return CSVDataset(str(e.tree), path)

    return build


def missing_layout(cls_name: str, split: str = "trainval") -> Callable[[Env], Any]:
    def build(e: Env) -> Any:
        import hmc.data

        root = e.dir / "empty" / cls_name
        root.mkdir(parents=True, exist_ok=True)
        return getattr(hmc.data, cls_name)(root, split)

    return build


API_CASES: list[tuple[str, Callable[[Env], Any], type[BaseException], str]] = [
    ("load-model-folder", api_load_folder, IsADirectoryError, "is a folder"),
    ("build-unknown-head", api_build_unknown_head, ValueError, "`head` to be one of"),
    ("build-foreign-head-kwargs", api_build_foreign_kwargs, ValueError, "['hidden'] do not"),
    ("module-negative-backbone-lr", api_module_lr, ValueError, "`backbone_lr`"),
    ("predict-files-choice", api_skip_choice, ValueError, "on_bad_image"),
    ("unknown-shipped-hierarchy", api_unknown_shipped, ValueError, "cub2000"),
    ("csv-header-unknown", csv_dataset("file,species\nimages/0.png,a1\n"), ValueError,
     "call the columns path and label, or set path_column/label_column"),
    ("csv-header-half", csv_dataset("path,species\nimages/0.png,a1\n"), ValueError,
     "has no column 'label'"),
    ("csv-one-field", csv_dataset("path,label\nimages/0.png\n"), ValueError,
     ":2: expected a path and a label"),
    ("csv-unknown-label", csv_dataset("path,label\nimages/0.png,a1\nimages/1.png,zz\n"),
     KeyError, "zz"),
    ("csv-conflicting-labels", csv_dataset("path,label\nimages/0.png,a1\nimages/0.png,b1\n"),
     ValueError, "images/0.png"),
    ("csv-missing", lambda e: __import__("hmc.data").data.CSVDataset(str(e.tree), e.dir / "n.csv"),
     FileNotFoundError, "n.csv not found"),
    ("cub-missing-images-txt", missing_layout("CUB200"), FileNotFoundError, "images.txt"),
    ("nabirds-missing", missing_layout("NABirds"), FileNotFoundError, "NABirds"),
    ("aircraft-missing", missing_layout("FGVCAircraft", "train"), FileNotFoundError,
     "FGVCAircraft"),
    ("cars-missing", missing_layout("StanfordCars"), FileNotFoundError, "StanfordCars"),
]  # fmt: skip


@pytest.mark.parametrize(("build", "error", "fragment"), [c[1:] for c in API_CASES],
                         ids=[c[0] for c in API_CASES])  # fmt: skip
def test_api_bad_input(env, build, error, fragment):
    with pytest.raises(error) as info:
        build(env)
    assert fragment in str(info.value)


def test_the_table_is_large_and_distinct():
    ids = [c[0] for c in CLI_CASES] + [c[0] for c in API_CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 60


# ----------------------------------------------------------------- predict over bad files
def test_predict_skip_keeps_rows_aligned_and_counts_bad_files(env, capsys, tmp_path):
    import csv

    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, name in enumerate(["0.png", "1.png", "2.png", "3.png", "4.png"]):
        target = folder / name
        if i in (1, 3):
            target.write_bytes(b"not an image")
        else:
            target.write_bytes((env.images / f"{i}.png").read_bytes())
    out = tmp_path / "p.csv"
    code, text = run(
        ["predict", "--ckpt_path", str(env.ckpt), str(folder), "--output", str(out),
         "--on_bad_image", "skip", "--data.batch_size", "2"], capsys,
    )  # fmt: skip
    assert code == 0, text
    assert "2 of 5 images could not be read" in text
    rows = list(csv.DictReader(out.open()))
    assert [Path(r["image"]).name for r in rows] == [f"{i}.png" for i in range(5)]
    assert [bool(r["error"]) for r in rows] == [False, True, False, True, False]
    assert all(r["prediction"] == "" and r["fine_prob"] == "" for r in rows if r["error"])
    assert all(r["prediction"] in ("a1", "a2", "b1", "a", "b") for r in rows if not r["error"])
    # The good rows are those of predicting the good files alone.
    from hmc import load_model

    good = load_model(env.ckpt).predict_files(
        [folder / "0.png", folder / "2.png", folder / "4.png"]
    )
    assert [r["prediction"] for r in rows if not r["error"]] == [r["prediction"] for r in good]
    # raise (the default) stops at the first bad file and names it.
    code, text = run(["predict", "--ckpt_path", str(env.ckpt), str(folder)], capsys)
    assert code == 1 and "1.png" in text


def test_predict_skip_with_only_bad_files(env, tmp_path):
    from hmc import load_model

    (tmp_path / "x.png").write_bytes(b"")
    rows = load_model(env.ckpt).predict_files([tmp_path], on_bad_image="skip")
    assert len(rows) == 1 and rows[0]["error"] and rows[0]["fine_prob"] is None
    assert set(rows[0]) >= {"image", "prediction", "path", "coarse", "fine_name", "error"}


# ------------------------------------------------------------------------------ --debug
def test_debug_shows_the_traceback(env, capsys, monkeypatch):
    monkeypatch.chdir(env.dir)
    with pytest.raises(ValueError, match="batch_size"):
        main(["fit", "--config", str(env.config), "--data.batch_size", "-1", "--debug"])
    monkeypatch.setenv("HMC_DEBUG", "1")
    with pytest.raises(ValueError, match="batch_size"):
        main(["fit", "--config", str(env.config), "--data.batch_size", "-1"])


def test_a_bug_is_not_hidden(env, capsys, monkeypatch):
    """Only user errors become one line: an unexpected exception keeps its traceback."""
    import hmc.cli

    def broken(argv):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(hmc.cli, "hierarchy_main", broken)
    with pytest.raises(ZeroDivisionError):
        main(["hierarchy", "show", "x"])


def test_pickle_is_never_run(env, tmp_path):
    """A checkpoint with a pickled object is refused, not executed (weights-only load)."""
    from hmc.predict import read_checkpoint

    path = tmp_path / "evil.ckpt"
    with path.open("wb") as f:
        pickle.dump({"hmc": Path("x")}, f)
    with pytest.raises(ValueError, match="cannot read checkpoint|not an hmc checkpoint"):
        read_checkpoint(path)


def test_resume_with_the_same_settings_passes_the_checks(env, capfd, tmp_path):
    """Also: Lightning's known noise is filtered, narrowly (fd-level capture: Lightning's log
    handler writes to the original stderr)."""
    import shutil

    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    shutil.copy(env.ckpt, ckpt)
    args = ["fit", "--config", str(env.config), "--trainer.default_root_dir", str(tmp_path),
            "--checkpoint.dirpath", str(ckpt.parent), "--trainer.max_epochs", "2"]  # fmt: skip
    code, text = run(
        [*args, "--ckpt_path", "last", "--trainer.enable_model_summary", "true"], capfd
    )
    assert code == 0, text
    assert text.count(f"hmc fit: writing to {tmp_path}") == 1
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1, text
    assert "Total params" in text and "Non-trainable params" in text  # the summary stays
    for noise in (
        "Total Flops",
        "GPU available: False",
        "TPU available: False",
        "litlogger",
        "set_vital",
        "Trainer already configured with model summary",
    ):
        assert noise not in text
    code, text = run([*args, "--ckpt_path", str(ckpt), "--model.head", "flat"], capfd)
    assert code == 1 and "model.head: checkpoint 'hrn', config 'flat'" in text
