"""Exact resume through the real ``hmc fit`` with configs/base.yaml's checkpoints: a run with the
periodic ``step_checkpoint`` SIGKILLed after a mid-epoch checkpoint and resumed with
``--ckpt_path last`` ends with the uninterrupted run's weights and metrics. A tiny folder
dataset, test_resnet, 16 px. (Epoch-boundary resume and the run-folder guard:
tests/test_e2e.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "configs" / "base.yaml"
HMC = [sys.executable, "-m", "hmc.cli"]


def env() -> dict[str, str]:
    path = [str(REPO), str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(path),  # pause_callback
    }


def write_tree(root: Path, per_class: int = 8) -> Path:
    """A folder dataset a/{a1,a2}, b/{b1,b2} of 16 px PNGs (the class is a bright corner)."""
    rng = np.random.default_rng(0)
    for k, leaf in enumerate(["a/a1", "a/a2", "b/b1", "b/b2"]):
        (root / leaf).mkdir(parents=True)
        for i in range(per_class):
            img = (rng.random((16, 16, 3)) * 80).astype(np.uint8)
            img[8 * (k // 2) : 8 * (k // 2) + 8, 8 * (k % 2) : 8 * (k % 2) + 8] = 255
            Image.fromarray(img).save(root / leaf / f"{i}.png")
    return root


def write_config(work: Path, data: Path, devices: int = 1, at: int = -1) -> list[str]:
    """A recipe on top of configs/base.yaml: 24 training images (batch 4 per process, 6 steps
    per epoch in one process, 3 in two), 2 epochs, a step checkpoint every 2 steps."""
    run = work / "run"
    strategy = "ddp" if devices > 1 else "auto"
    (work / "cfg.yaml").write_text(
        f"""\
trainer:
  accelerator: cpu
  devices: {devices}
  strategy: {strategy}
  max_epochs: 2
  default_root_dir: {run}
  enable_progress_bar: false
  enable_model_summary: false
  log_every_n_steps: 1
  logger: false
  callbacks:
    - class_path: hmc.training.ResultsTable
      init_args: {{stages: [fit]}}
    - class_path: pause_callback.PauseAt
      init_args: {{step: {at}, marker: {work / "paused"}}}
checkpoint:
  dirpath: {run / "checkpoints"}
step_checkpoint:
  every_n_train_steps: 2
model:
  backbone: test_resnet
  head: hrn
  head_kwargs: {{mid_channels: 8, block_channels: 16, hidden: 16, feature_dim: 8}}
  lr: 0.05
  backbone_lr: 0.05
  calibrate: true
data:
  dataset: folder
  root: {data}
  batch_size: 4
  num_workers: 0
  image_size: 16
  preset: small
  val_fraction: 0.25
  balanced_sampling: level_1
"""
    )
    return ["fit", "--config", str(BASE), "--config", str(work / "cfg.yaml")]


def hmc(args: list[str], cwd: Path) -> None:
    proc = subprocess.run(
        [*HMC, *args], cwd=cwd, env=env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"hmc {' '.join(args)} failed:\n{proc.stderr}"


def fit_killed_when_paused(args: list[str], work: Path, ranks: int = 1) -> None:
    """``hmc fit`` in its own process group, SIGKILLed (every rank) once PauseAt holds it."""
    proc = subprocess.Popen(
        [*HMC, *args], cwd=work, env=env(), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    markers = [work / f"paused.{rank}" for rank in range(ranks)]
    try:
        deadline = time.monotonic() + 300
        while not all(m.exists() for m in markers):
            assert proc.poll() is None, f"fit ended early:\n{proc.stderr.read()}"
            assert time.monotonic() < deadline, "the run never reached the pause"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # DDP: rank 1 is a child of rank 0
        proc.wait(timeout=60)


def last(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def assert_same_run(got: Path, want: Path) -> None:
    a, b = last(got)["state_dict"], last(want)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        if a[key].is_floating_point():
            assert torch.allclose(a[key], b[key], rtol=0, atol=1e-6), key
    got_m = json.loads((got / "val_metrics.json").read_text())["metrics"]
    want_m = json.loads((want / "val_metrics.json").read_text())["metrics"]
    assert got_m.keys() == want_m.keys()
    for key, value in want_m.items():
        assert got_m[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_tree(tmp_path_factory.mktemp("tree"))


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("uninterrupted")
    hmc(write_config(work, data), work)
    assert sorted(p.name for p in (work / "run" / "checkpoints").iterdir()) == ["last.ckpt"]
    assert last(work / "run")["global_step"] == 12
    return work / "run"


def test_sigkill_after_a_step_checkpoint_resumes_to_the_uninterrupted_run(
    data, uninterrupted, tmp_path
):
    """Killed inside epoch 1 (6 steps per epoch), after the step-8 checkpoint overwrote epoch 0's
    (step 6) last.ckpt: the resume continues from step 8, mid-epoch, and ends bit-identical
    (1e-6 allowed). (The step checkpoint skips an epoch's last batch: tests/training/
    test_checkpoint.py.)"""
    args = write_config(tmp_path, data, at=9)
    fit_killed_when_paused(args, tmp_path)
    ckpt = last(tmp_path / "run")
    assert ckpt["global_step"] == 8
    assert ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 1
    hmc([*args, "--ckpt_path", "last"], tmp_path)
    assert last(tmp_path / "run")["global_step"] == 12
    assert_same_run(tmp_path / "run", uninterrupted)


@pytest.mark.skipif(
    os.environ.get("HMC_SLOW_TESTS") != "1", reason="3 two-process runs: set HMC_SLOW_TESTS=1"
)
def test_ddp_sigkill_after_a_step_checkpoint_resumes_to_the_uninterrupted_ddp_run(data, tmp_path):
    """2 CPU processes (DDP, gloo), 3 steps per epoch: both ranks SIGKILLed inside epoch 1,
    after the step-4 checkpoint; resumed, they end bit-identical to the uninterrupted 2-process
    run (1e-6 allowed). Each rank keeps its shard and position (DistributedEpochSampler); the
    global RNG states are rank 0's, which equal rank 1's (same seed, same draws: augmentation
    is seeded per sample). 166 s at load 5 on 2 cores (6 processes start), so on demand only:
    ``HMC_SLOW_TESTS=1 pytest tests/training/test_resume_cli.py``."""
    want = tmp_path / "uninterrupted"
    want.mkdir()
    hmc(write_config(want, data, devices=2), want)
    assert last(want / "run")["global_step"] == 6
    work = tmp_path / "killed"
    work.mkdir()
    args = write_config(work, data, devices=2, at=5)
    fit_killed_when_paused(args, work, ranks=2)
    assert last(work / "run")["global_step"] == 4
    hmc([*args, "--ckpt_path", "last"], work)
    assert last(work / "run")["global_step"] == 6
    assert_same_run(work / "run", want / "run")
