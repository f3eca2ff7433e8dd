"""The ``hmc`` entry point in-process: ``hierarchy show|validate``, unknown-key hints, every
shipped config through ``--print_config``, overrides, and ``predict``'s argument errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from hmc.cli import did_you_mean, main

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
BASE = CONFIG_DIR / "base.yaml"
RECIPES = sorted(p for p in CONFIG_DIR.glob("*.yaml") if p != BASE)


def composed(recipe: Path) -> list[str]:
    """``--config configs/base.yaml --config <recipe>``, as the recipes are meant to be run."""
    return ["--config", str(BASE), "--config", str(recipe)]


def run_main(args: list[str]) -> int:
    with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit) as info:
        mp.setattr(sys, "argv", ["hmc"])  # LightningCLI warns if both argv and args are given
        main(args)
    code = info.value.code
    return 0 if code is None else int(code)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is as fast, and far faster on cores shared with other
    processes (OpenMP threads spin waiting for each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------- hierarchy
def test_hierarchy_show_prints_counts_per_level(capsys):
    assert run_main(["hierarchy", "show", "fashion-mnist"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == (
        "Hierarchy('fashion-mnist', domain=3, type=6, class=10, leaves=10)"
    )
    assert "- class: Sandal" in out


def test_hierarchy_show_reads_a_path(tmp_path, capsys):
    path = tmp_path / "t.tree"
    path.write_text("# hmc-hierarchy 1\n@levels\tcoarse\tfine\na\t\tA\nb\t\tB\na1\ta\tA one\n")
    assert run_main(["hierarchy", "show", str(path), "--max_children", "1"]) == 0
    out = capsys.readouterr().out
    assert "coarse=2, fine=1" in out and "... 1 more" in out


def test_hierarchy_validate_ok_and_error(tmp_path, capsys):
    assert run_main(["hierarchy", "validate", "cub200-hrn"]) == 0
    out = capsys.readouterr().out
    assert "OK: cub200-hrn" in out and "order=13, family=38, species=200" in out
    bad = tmp_path / "bad.tree"
    bad.write_text("# hmc-hierarchy 1\n@levels\ta\tb\nx\t\tX\ny\tx\tY\ny\tx\tY2\n")
    assert run_main(["hierarchy", "validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "bad.tree:5: duplicate id 'y'" in err and err.count("bad.tree") == 1
    assert run_main(["hierarchy", "validate", "cub2000"]) == 1
    assert "did you mean" in capsys.readouterr().err


# --------------------------------------------------------------------------- key hints
def test_did_you_mean_prefers_the_same_group():
    keys = ["model.backbone", "model.backbone_lr", "data.batch_size", "trainer.max_epochs"]
    assert did_you_mean("model.backbone_lrr", keys) == "model.backbone_lr"
    assert did_you_mean("trainer.max_epoch", keys) == "trainer.max_epochs"
    assert did_you_mean("model.zzz", keys) is None


@pytest.mark.parametrize("where", ["file", "command line"])
def test_config_typo_names_the_key_and_the_closest_valid_one(tmp_path, capsys, where):
    demo = yaml.safe_load((CONFIG_DIR / "demo.yaml").read_text())
    if where == "file":
        demo["model"]["backbone_lrr"] = demo["model"].pop("backbone_lr")
        cfg = tmp_path / "typo.yaml"
        cfg.write_text(yaml.safe_dump(demo))
        args = ["fit", *composed(cfg)]
    else:
        args = ["fit", *composed(CONFIG_DIR / "demo.yaml"), "--data.batch_sise", "4"]
    assert run_main(args) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    typo, right = (
        ("model.backbone_lrr", "model.backbone_lr")
        if where == "file"
        else ("data.batch_sise", "data.batch_size")
    )
    assert typo in last and f"Did you mean '{right}'?" in last


# ------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_composes_with_the_base_config(recipe, capsys):
    assert run_main(["fit", *composed(recipe), "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    own, base = yaml.safe_load(recipe.read_text()), yaml.safe_load(BASE.read_text())
    for section in ("model", "data", "checkpoint"):  # the recipe's own settings survive
        for key, value in own[section].items():
            assert printed[section][key] == value, f"{section}.{key}"
    for key, value in base["checkpoint"].items():  # and so do the base's
        assert printed["checkpoint"][key] == value, f"checkpoint.{key}"
    logger = printed["trainer"]["logger"]  # the base's class, the recipe's run folder
    assert logger["class_path"] == base["trainer"]["logger"]["class_path"]
    assert logger["init_args"]["save_dir"] == own["trainer"]["logger"]["init_args"]["save_dir"]
    callbacks = [c["class_path"] for c in printed["trainer"]["callbacks"]]
    added = own["trainer"].get("callbacks+", [])  # a recipe may append callbacks
    assert callbacks == [c["class_path"] for c in [*base["trainer"]["callbacks"], *added]]
    assert "hierarchy" not in printed["model"]  # linked from data.hierarchy at instantiation


def test_the_data_hierarchy_reaches_the_model(tmp_path):
    """Instantiating a recipe (no training): the model is built on the data module's hierarchy."""
    from hmc.cli import HMCLightningCLI
    from hmc.hierarchy import load_hierarchy
    from hmc.training import HMCDataModule, HMCModule

    args = [
        *composed(CONFIG_DIR / "cub200_hrn.yaml"), "--model.backbone", "test_resnet",
        "--model.pretrained", "false", "--model.head_kwargs", "{hidden: 16, feature_dim: 8}",
        "--data.root", str(tmp_path), "--trainer.logger", "false",
    ]  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["hmc"])
        cli = HMCLightningCLI(HMCModule, HMCDataModule, args=args, run=False)
    assert cli.model.hierarchy is cli.datamodule.hierarchy
    assert cli.model.hierarchy.fingerprint() == load_hierarchy("cub200-hrn").fingerprint()
    out = cli.model(torch.randn(2, 3, 32, 32))
    assert out.node_scores.shape == (2, 13 + 38 + 200)  # order, family, species


def test_overrides_reach_the_config(capsys):
    args = [
        "fit", *composed(CONFIG_DIR / "cub200_hrn.yaml"), "--model.head", "flat",
        "--data.relabel.ratio", "0.7", "--trainer.callbacks.refresh_rate", "0",
        "--step_checkpoint.every_n_train_steps", "500", "--print_config",
    ]  # fmt: skip
    assert run_main(args) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["head"] == "flat"
    assert printed["data"]["relabel"]["ratio"] == 0.7
    assert printed["trainer"]["callbacks"][-1]["init_args"]["refresh_rate"] == 0
    assert printed["step_checkpoint"]["every_n_train_steps"] == 500
    assert "dirpath" not in printed["step_checkpoint"]  # linked from checkpoint.dirpath


@pytest.mark.parametrize(
    "trigger",
    [
        [],
        ["--step_checkpoint.every_n_train_steps", "500"],
        ["--step_checkpoint.train_time_interval", "0:30:00"],
    ],
)
def test_the_step_checkpoint_joins_the_epoch_one_only_with_a_trigger(tmp_path, trigger):
    """base.yaml's step_checkpoint has no trigger (Lightning would make it a second epoch-end
    checkpoint): left out; with one, a StepCheckpoint in the epoch checkpoint's folder."""
    from hmc.cli import HMCLightningCLI
    from hmc.training import HMCDataModule, HMCModule, StepCheckpoint

    args = [
        *composed(CONFIG_DIR / "cub200_hrn.yaml"), "--model.backbone", "test_resnet",
        "--model.pretrained", "false", "--data.root", str(tmp_path),
        "--trainer.logger", "false", "--checkpoint.dirpath", str(tmp_path / "ckpts"), *trigger,
    ]  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["hmc"])
        cli = HMCLightningCLI(HMCModule, HMCDataModule, args=args, run=False)
    found = cli.trainer.checkpoint_callbacks
    assert [type(cb).__name__ for cb in found] == ["ModelCheckpoint"] + (
        ["StepCheckpoint"] if trigger else []
    )
    assert {cb.dirpath for cb in found} == {str(tmp_path / "ckpts")}
    if trigger:
        assert isinstance(found[1], StepCheckpoint) and found[1].save_last


# ------------------------------------------------------------------------------ predict
def test_predict_argument_errors(tmp_path, capsys):
    assert run_main(["predict", "--ckpt_path", str(tmp_path / "x.ckpt")]) == 2
    assert "--data.predict_paths" in capsys.readouterr().err
    img = tmp_path / "a.png"
    img.write_bytes(b"")
    code = run_main(["predict", "--ckpt_path", str(tmp_path / "none.ckpt"), str(img)])
    assert code == 1 and "does not exist" in capsys.readouterr().err
    not_hmc = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, not_hmc)
    assert run_main(["predict", "--ckpt_path", str(not_hmc), str(img)]) == 1
    assert "not an hmc checkpoint" in capsys.readouterr().err


def test_predict_decoder_and_its_options_reach_the_predictor(tmp_path, capsys):
    import json

    import numpy as np
    import pytorch_lightning as pl
    from PIL import Image
    from torch.utils.data import DataLoader, TensorDataset

    from hmc import Hierarchy, load_model
    from hmc.training import HMCModule

    h = Hierarchy.from_paths([("a", "a1"), ("a", "a2"), ("b", "b1")], level_names=["c", "f"])
    m = HMCModule(h, backbone="test_resnet", head="leaf", decoder="threshold")
    targets = torch.tensor([2, 3, 4, 2, 3, 4, 0, 1])
    data = DataLoader(TensorDataset(torch.randn(8, 3, 16, 16), targets), batch_size=4)
    t = pl.Trainer(
        max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
        enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    t.fit(m, data)
    ckpt = tmp_path / "m.ckpt"
    t.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=True)  # fitted without a data module: add the
    saved["hmc"]["transform"] = {"preset": "small", "image_size": 16}  # evaluation transform
    torch.save(saved, ckpt)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{i}.png")

    def predict(*extra: str) -> list[dict]:
        out = tmp_path / "p.json"
        args = ["predict", "--ckpt_path", str(ckpt), str(images), "--output", str(out), *extra]
        assert run_main(args) == 0, capsys.readouterr().err
        return json.loads(out.read_text())

    def paths(rows: list[dict]) -> list[str]:
        return [r["path"] for r in rows]

    assert paths(predict()) == paths(load_model(ckpt).predict_files([images]))
    strict = load_model(ckpt, decoder_kwargs={"threshold": 0.99}).predict_files([images])
    got = predict("--decoder_kwargs", "{threshold: 0.99}")
    assert paths(got) == paths(strict)
    assert all(r["f_prob"] is None or r["f_prob"] >= 0.99 for r in got)
    argmax = predict("--decoder", "argmax")
    assert all(r["path"].count(" > ") == 1 for r in argmax)  # argmax names every level
    code = run_main(["predict", "--ckpt_path", str(ckpt), str(images), "--decoder", "beam"])
    assert code == 1 and "Expected argument `decoder` to be one of" in capsys.readouterr().err


# ------------------------------------------------------------------- top level and startup
def test_help_lists_every_command_and_version(capsys):
    from hmc import __version__
    from hmc.cli import COMMANDS

    assert run_main(["--help"]) == 0
    usage = capsys.readouterr().out.splitlines()[0]
    assert all(name in usage for name in ("fit", "validate", "test", "predict", "hierarchy",
                                          "export", "explain"))  # fmt: skip
    assert "{" + "|".join(COMMANDS) + "}" in usage
    assert run_main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"hmc {__version__}"
    assert run_main(["expalin"]) == 2
    assert "Did you mean 'explain'?" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args", [["--help"], ["--version"], ["hierarchy", "validate", "HIER"], ["hierarchy", "--help"]]
)
def test_help_and_hierarchy_import_neither_lightning_nor_timm(tmp_path, args):
    import subprocess

    tree = tmp_path / "h.csv"
    tree.write_text("order,species\nA,a\nB,b\n")
    args = [str(tree) if a == "HIER" else a for a in args]
    code = (
        "import sys\nfrom hmc.cli import main\ntry:\n    main(sys.argv[1:])\n"
        "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "heavy = {m.split('.')[0] for m in sys.modules} & {'pytorch_lightning', 'lightning', "
        "'lightning_fabric', 'timm', 'wandb', 'torchvision'}\n"
        "assert not heavy, heavy\n"
    )
    if args[0] == "--help" or args[0] == "--version":  # not even jsonargparse or torch
        code += "assert not {'jsonargparse', 'torch'} & set(sys.modules), 'loaded'\n"
    if args[:2] == ["hierarchy", "validate"]:  # reading and checking a tree needs no torch
        code += "assert 'torch' not in sys.modules, 'torch loaded'\n"
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
