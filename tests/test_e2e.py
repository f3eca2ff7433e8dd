"""End to end: the real ``hmc`` command in subprocesses on a tiny Fashion-MNIST-layout fixture
(16 px, test_resnet backbone, a few steps): fit (W&B offline), validate, test, predict,
load_model on the saved checkpoint, exact resume after SIGKILL, the run-folder guard and
2-process DDP. (The config-typo error runs the same entry point in-process: tests/test_cli.py.)"""

from __future__ import annotations

import csv
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
HMC = [sys.executable, "-m", "hmc.cli"]
CLASSES = 10
TRAIN_PER_CLASS, TEST_PER_CLASS = 8, 2  # val_fraction 0.25 -> 60 train, 20 val, 20 test
BASE_CHECKPOINT = yaml.safe_load((REPO / "configs" / "base.yaml").read_text())["checkpoint"]


def env() -> dict[str, str]:
    # One thread per process: tiny models gain nothing from more, and DDP runs two processes.
    extra = {
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    return {**os.environ, **extra}


def hmc(*args: str, cwd: Path, check: bool = True, timeout: float = 600):
    proc = subprocess.run(
        [*HMC, *args], cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"hmc {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


# ------------------------------------------------------------------------------ fixtures
def class_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[n, 28, 28] uint8: noise plus a bright 7x7 square whose place encodes the class."""
    imgs = (rng.random((len(labels), 28, 28)) * 80).astype(np.uint8)
    for i, c in enumerate(labels):
        r, k = divmod(int(c), 4)
        imgs[i, 7 * r : 7 * r + 7, 7 * k : 7 * k + 7] = 255
    return imgs


def write_fashion_mnist(root: Path, seed: int = 0) -> Path:
    """Fashion-MNIST in torchvision's raw layout (uncompressed idx files), tiny."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for prefix, per_class in (("train", TRAIN_PER_CLASS), ("t10k", TEST_PER_CLASS)):
        labels = np.tile(np.arange(CLASSES, dtype=np.uint8), per_class)
        imgs = class_images(labels, rng)
        n = len(labels)
        header = struct.pack(">IIII", 2051, n, 28, 28)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + imgs.tobytes())
        labels_bytes = struct.pack(">II", 2049, n) + labels.tobytes()
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(labels_bytes)
    return root


def write_config(
    path: Path,
    data_root: Path,
    run: Path,
    *,
    logger: str = "false",
    epochs: int = 2,
    checkpoint: dict | None = None,
    devices: int = 1,
    extra_callbacks: str = "",
) -> Path:
    """A config with configs/base.yaml's checkpointing (updated by ``checkpoint``) in
    ``run/checkpoints``, the results table and ``extra_callbacks``."""
    strategy = "ddp" if devices > 1 else "auto"
    checkpoint = {**BASE_CHECKPOINT, "dirpath": str(run / "checkpoints"), **(checkpoint or {})}
    path.write_text(
        f"""\
seed_everything: 0
trainer:
  accelerator: cpu
  devices: {devices}
  strategy: {strategy}
  max_epochs: {epochs}
  default_root_dir: {run}
  enable_progress_bar: false
  enable_model_summary: false
  log_every_n_steps: 1
  num_sanity_val_steps: 0
  logger: {logger}
  callbacks:
    - class_path: hmc.training.ResultsTable
      init_args: {{stages: [fit, validate, test]}}
{extra_callbacks}
checkpoint: {json.dumps(checkpoint)}
model:
  backbone: test_resnet
  head: hrn
  head_kwargs: {{mid_channels: 8, block_channels: 16, hidden: 16, feature_dim: 8}}
  lr: 0.05
  backbone_lr: 0.05
data:
  dataset: fashion-mnist
  root: {data_root}
  batch_size: 10
  num_workers: 0
  image_size: 16
  preset: small
  val_fraction: 0.25
  relabel: {{ratio: 0.5}}
  dataset_kwargs: {{system_dir: null}}
"""
    )
    return path


def csv_logger(save_dir: Path) -> str:
    return (
        "{class_path: pytorch_lightning.loggers.CSVLogger, "
        f"init_args: {{save_dir: {save_dir}, name: csv}}}}"
    )


WANDB_CALLBACKS = """\
    - class_path: hmc.training.PerLevelAccuracyPlot
    - class_path: hmc.training.LogHierarchy
    - class_path: hmc.training.LogSummary"""


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory) -> Path:
    return write_fashion_mnist(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fmnist):
    """One `hmc fit` with the W&B logger (offline) and the plot callback."""
    work = tmp_path_factory.mktemp("fit")
    run = work / "run"
    logger = (
        "{class_path: hmc.training.WandbLogger, "
        f"init_args: {{save_dir: {run}, project: hmc-test, name: e2e}}}}"
    )
    cfg = write_config(
        work / "cfg.yaml", fmnist, run, logger=logger, extra_callbacks=WANDB_CALLBACKS
    )
    proc = hmc("fit", "--config", str(cfg), cwd=work)
    return {"work": work, "run": run, "cfg": cfg, "ckpt": run / "checkpoints" / "last.ckpt",
            "proc": proc}  # fmt: skip


def metrics_json(path: Path) -> dict[str, float]:
    return json.loads(path.read_text())["metrics"]


# --------------------------------------------------------------------------------- tests
def test_fit_writes_checkpoint_plot_config_and_offline_wandb_run(trained):
    run = trained["run"]
    ckpt = torch.load(trained["ckpt"], map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 12  # 2 epochs x 6 batches of 10
    assert ckpt["hmc"]["model_config"]["backbone"] == "test_resnet"
    assert (run / "per_level_accuracy.png").stat().st_size > 0
    rows = list(csv.DictReader((run / "per_level_accuracy.csv").open()))
    assert len(rows) == 2  # one per epoch
    assert (run / "config.yaml").is_file()
    offline = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1 and offline[0].stat().st_size > 0
    val = metrics_json(run / "val_metrics.json")
    assert {"val/acc/domain", "val/acc/type", "val/acc/class", "val/fpa"} <= set(val)
    assert "val results per level" in trained["proc"].stdout


def test_validate_and_test_on_the_checkpoint(trained):
    work, ckpt = trained["work"], str(trained["ckpt"])
    fit_val = metrics_json(trained["run"] / "val_metrics.json")
    out = work / "eval"
    for stage in ("validate", "test"):
        proc = hmc(
            stage, "--config", str(trained["cfg"]), "--ckpt_path", ckpt,
            "--trainer.logger", "false", "--trainer.default_root_dir", str(out), cwd=work,
        )  # fmt: skip
        prefix = "val" if stage == "validate" else "test"
        assert f"{prefix} results per level" in proc.stdout
        got = metrics_json(out / f"{prefix}_metrics.json")
        assert 0.0 <= got[f"{prefix}/acc/class"] <= 1.0
    # Validating the saved weights reproduces the last validation of fit.
    again = metrics_json(out / "val_metrics.json")
    for key in ("val/acc/domain", "val/acc/class", "val/fpa", "val/hf1"):
        assert again[key] == pytest.approx(fit_val[key], abs=1e-6)


def test_predict_writes_csv_and_json_matching_load_model(trained, tmp_path):
    from PIL import Image

    from hmc import load_model

    rng = np.random.default_rng(1)
    labels = np.array([0, 1, 5, 9, 3])
    imgs = class_images(labels, rng)
    (tmp_path / "folder" / "sub").mkdir(parents=True)
    paths = [tmp_path / "one.png", *(tmp_path / "folder" / f"{i}.png" for i in range(2))]
    paths += [tmp_path / "folder" / "sub" / f"{i}.png" for i in range(2)]
    for p, img in zip(paths, imgs, strict=True):
        Image.fromarray(img).save(p)
    ckpt = str(trained["ckpt"])
    hmc(
        "predict", "--ckpt_path", ckpt, "--data.predict_paths",
        f"[{paths[0]}, {tmp_path / 'folder'}]", "--output", str(tmp_path / "p.csv"),
        cwd=tmp_path,
    )  # fmt: skip
    hmc("predict", "--ckpt_path", ckpt, str(paths[0]), "--output", str(tmp_path / "p.json"),
        cwd=tmp_path)  # fmt: skip
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert [r["image"] for r in rows] == [str(p) for p in paths]
    for r in rows:
        assert r["path"].count(" > ") == 2  # argmax decodes to a leaf
        assert all(0.0 <= float(r[f"{lv}_prob"]) <= 1.0 for lv in ("domain", "type", "class"))
    as_json = json.loads((tmp_path / "p.json").read_text())
    assert len(as_json) == 1 and as_json[0]["class"] == rows[0]["class"]

    predictor = load_model(ckpt)
    assert not predictor.model.training
    direct = predictor.predict_files([str(p) for p in paths])
    assert [d["class"] for d in direct] == [r["class"] for r in rows]
    assert [d["class_prob"] for d in direct] == pytest.approx(
        [float(r["class_prob"]) for r in rows]
    )


def test_onnx_export_of_the_trained_checkpoint_predicts_like_pytorch(trained, tmp_path):
    """`hmc export` of the trained demo-config checkpoint (raw head outputs, the default) and
    `hmc predict --model` on Fashion-MNIST-layout PNGs: the same node at every level as `hmc
    predict --ckpt_path`, probabilities within 1e-4."""
    from PIL import Image

    rng = np.random.default_rng(2)
    labels = np.arange(CLASSES)
    folder = tmp_path / "images"
    folder.mkdir()
    for i, img in enumerate(class_images(labels, rng)):
        Image.fromarray(img).save(folder / f"{i:02d}.png")
    onnx = tmp_path / "model.onnx"
    hmc("export", "--ckpt_path", str(trained["ckpt"]), "--output", str(onnx), cwd=tmp_path)
    for source, out in (("--ckpt_path", trained["ckpt"]), ("--model", onnx)):
        hmc("predict", source, str(out), str(folder), "--output",
            str(tmp_path / f"{source[2:]}.csv"), cwd=tmp_path)  # fmt: skip
    torch_rows = list(csv.DictReader((tmp_path / "ckpt_path.csv").open()))
    onnx_rows = list(csv.DictReader((tmp_path / "model.csv").open()))
    assert len(torch_rows) == CLASSES
    assert [r["image"] for r in onnx_rows] == [r["image"] for r in torch_rows]
    for want, got in zip(torch_rows, onnx_rows, strict=True):
        for level in ("domain", "type", "class"):
            assert got[level] == want[level]
            assert float(got[f"{level}_prob"]) == pytest.approx(
                float(want[f"{level}_prob"]), abs=1e-4
            )
    # The outputs depend on the image (12 training steps do not yet separate the classes).
    assert len({r["class_prob"] for r in torch_rows}) == CLASSES


def read_step(path: Path, timeout: float = 30) -> int:
    """global_step of a checkpoint that may still be being written."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def fit_killed_at_first_checkpoint(cfg: Path, last: Path) -> int:
    """`hmc fit` in a subprocess, SIGKILLed as soon as ``last`` appears; its saved step."""
    proc = subprocess.Popen(
        [*HMC, "fit", "--config", str(cfg)], cwd=cfg.parent, env=env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not last.exists():
            assert proc.poll() is None, f"fit ended early:\n{proc.stderr.read()}"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # no chance to save anything more
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return read_step(last)


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return {k: v for k, v in state["state_dict"].items() if v.is_floating_point()}


@pytest.fixture(scope="module")
def uninterrupted(fmnist, tmp_path_factory):
    """2 epochs x 6 steps, checkpoint every 2 steps, never interrupted."""
    work = tmp_path_factory.mktemp("uninterrupted")
    cfg = write_config(
        work / "cfg.yaml", fmnist, work / "run", checkpoint={"every_n_train_steps": 2}
    )
    hmc("fit", "--config", str(cfg), cwd=work)
    return work / "run"


@pytest.mark.parametrize("where", ["mid-epoch", "epoch-end"])
def test_resume_after_sigkill_repeats_the_uninterrupted_run_exactly(
    fmnist, uninterrupted, tmp_path, where
):
    """Killed with SIGKILL at its first checkpoint (a periodic one every 2 steps, mid-epoch;
    or base.yaml's epoch-end one) and resumed with --ckpt_path last: the final weights and
    validation metrics equal the uninterrupted run's (same machine, one thread: bit-identical;
    1e-6 allowed)."""
    run = tmp_path / "run"
    every = {"every_n_train_steps": 2} if where == "mid-epoch" else {}
    cfg = write_config(tmp_path / "cfg.yaml", fmnist, run, checkpoint=every)
    saved = fit_killed_at_first_checkpoint(cfg, run / "checkpoints" / "last.ckpt")
    if where == "mid-epoch":
        assert saved in (2, 4), saved  # 6 steps per epoch: inside epoch 0
    else:
        assert saved == 6  # after epoch 0
    hmc("fit", "--config", str(cfg), "--ckpt_path", "last", cwd=tmp_path)
    assert read_step(run / "checkpoints" / "last.ckpt") == 12
    want, got = final_weights(uninterrupted), final_weights(run)
    assert want.keys() == got.keys()
    for key in want:
        assert torch.allclose(got[key], want[key], rtol=0, atol=1e-6), key
    want_m = metrics_json(uninterrupted / "val_metrics.json")
    got_m = metrics_json(run / "val_metrics.json")
    assert want_m.keys() == got_m.keys()
    for key, value in want_m.items():
        assert got_m[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key


def test_a_new_fit_into_a_run_folder_refuses_until_overwrite(fmnist, tmp_path):
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "cfg.yaml", fmnist, run, epochs=1)
    hmc("fit", "--config", str(cfg), cwd=tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    before = {p: p.read_bytes() for p in (last, run / "config.yaml", run / "val_metrics.json")}
    proc = hmc("fit", "--config", str(cfg), cwd=tmp_path, check=False)
    assert proc.returncode != 0
    message = proc.stderr.strip().splitlines()[-1]
    assert str(run) in message and "--ckpt_path last" in message and "--overwrite" in message
    assert {p: p.read_bytes() for p in before} == before  # nothing of the run was touched
    hmc("fit", "--config", str(cfg), "--overwrite", "true", cwd=tmp_path)
    assert read_step(last) == 6
    # The saved config does not carry the overwrite: rerunning it is guarded again.
    assert yaml.safe_load((run / "config.yaml").read_text())["overwrite"] is False


def test_ddp_two_processes_match_a_single_process_evaluation(fmnist, tmp_path):
    """`hmc fit` on 2 CPU processes (DDP, gloo) then `hmc validate` of the saved weights in one
    process: the validation metrics logged by the DDP run equal the single-process ones.

    What is compared: evaluation of the SAME weights (the DDP run's final checkpoint) on the
    same 20 validation images. Equality needs metric states that are summed across processes
    (torchmetrics dist_reduce_fx) and no DistributedSampler padding, so the validation set
    size (20) is divisible by the world size (2). The training trajectory itself is NOT
    compared: with DDP each process sees a different shard and BatchNorm uses per-process
    batch statistics, so the weights differ from a single-process run's (both runs are seeded
    with seed_everything: 0, so they start from identical weights).
    """
    run = tmp_path / "run"
    cfg = write_config(
        tmp_path / "cfg.yaml", fmnist, run, logger=csv_logger(run), epochs=1, devices=2
    )
    hmc("fit", "--config", str(cfg), cwd=tmp_path)
    ddp = metrics_json(run / "val_metrics.json")
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3  # 60 training images / (2 processes x batch 10)
    single_dir = tmp_path / "single"
    hmc(
        "validate", "--config", str(cfg), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
        "--trainer.devices", "1", "--trainer.strategy", "auto", "--trainer.logger", "false",
        "--trainer.default_root_dir", str(single_dir), cwd=tmp_path,
    )  # fmt: skip
    single = metrics_json(single_dir / "val_metrics.json")
    assert set(ddp) == set(single)
    for key, value in single.items():
        assert ddp[key] == pytest.approx(value, abs=1e-5, nan_ok=True), key
