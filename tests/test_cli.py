"""The ``hmc`` entry point in-process: ``hierarchy show|validate``, unknown-key hints, every
shipped config through ``--print_config``, overrides, and ``predict``'s argument errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from hmc.cli import did_you_mean, main

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


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
    demo = yaml.safe_load((CONFIGS[0].parent / "demo.yaml").read_text())
    if where == "file":
        demo["model"]["backbone_lrr"] = demo["model"].pop("backbone_lr")
        cfg = tmp_path / "typo.yaml"
        cfg.write_text(yaml.safe_dump(demo))
        args = ["fit", "--config", str(cfg)]
    else:
        args = ["fit", "--config", str(CONFIGS[0].parent / "demo.yaml"), "--data.batch_sise", "4"]
    assert run_main(args) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    typo, right = (
        ("model.backbone_lrr", "model.backbone_lr")
        if where == "file"
        else ("data.batch_sise", "data.batch_size")
    )
    assert typo in last and f"Did you mean '{right}'?" in last


# ------------------------------------------------------------------------------ configs
def test_configs_exist():
    names = {p.stem for p in CONFIGS}
    assert names >= {
        "demo", "cub200_hrn", "cub200_flat", "cub200_leaf", "aircraft_hrn", "cars_hrn",
        "nabirds_hrn",
    }  # fmt: skip


@pytest.mark.parametrize("config", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_parses_with_print_config(config, capsys):
    header = config.read_text().splitlines()[:3]
    assert all(line.startswith("#") for line in header), "configs start with a header comment"
    text = config.read_text()
    assert "Time:" in text and ("Reproduces:" in text or "demo" in config.stem)
    assert run_main(["fit", "--config", str(config), "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    own = yaml.safe_load(text)
    for section in ("model", "data"):
        for key, value in own[section].items():
            assert printed[section][key] == value, f"{section}.{key}"
    assert printed["trainer"]["logger"]["class_path"] == "hmc.training.WandbLogger"
    assert "hierarchy" not in printed["model"]  # linked from data.hierarchy at instantiation


def test_paper_configs_follow_the_recipe():
    for name in ("cub200_hrn", "cub200_flat", "cub200_leaf", "aircraft_hrn", "cars_hrn"):
        cfg = yaml.safe_load((CONFIGS[0].parent / f"{name}.yaml").read_text())
        m, d, t = cfg["model"], cfg["data"], cfg["trainer"]
        assert (m["backbone"], m["pretrained"], m["optimizer"]) == ("resnet50.tv_in1k", True, "sgd")
        assert (m["lr"], m["backbone_lr"], m["momentum"], m["weight_decay"]) == (
            0.002, 0.0002, 0.9, 5e-4,
        )  # fmt: skip
        assert (d["image_size"], d["batch_size"], d["preset"]) == (448, 8, "paper")
        assert (t["max_epochs"], m["scheduler"]) == (200, "cosine")
        callbacks = [c["class_path"] for c in t["callbacks"]]
        assert callbacks[-1] == "pytorch_lightning.callbacks.RichProgressBar"
    cub = yaml.safe_load((CONFIGS[0].parent / "cub200_hrn.yaml").read_text())
    assert cub["data"]["hierarchy"] == "cub200-hrn" and cub["model"]["head"] == "hrn"


def test_overrides_reach_the_config(capsys):
    args = [
        "fit", "--config", str(CONFIGS[0].parent / "cub200_hrn.yaml"), "--model.head", "flat",
        "--data.relabel.ratio", "0.7", "--trainer.callbacks.refresh_rate", "0", "--print_config",
    ]  # fmt: skip
    assert run_main(args) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["head"] == "flat"
    assert printed["data"]["relabel"]["ratio"] == 0.7
    assert printed["trainer"]["callbacks"][-1]["init_args"]["refresh_rate"] == 0


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
