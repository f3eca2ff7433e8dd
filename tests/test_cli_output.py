"""One line per fact, read from the real output of ``hmc fit`` in a subprocess: Lightning's
default summary next to the Rich progress bar (RichModelSummary, no ModelSummary in the config)
keeps its table but not "Total FLOPs: 0"; an offline W&B run (no API key, no WANDB_SILENT)
prints hmc's notice and W&B's own start and end lines, which say the same, are left out."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def write_tree(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for leaf in ["a/a1", "a/a2", "b/b1", "b/b2"]:
        (root / leaf).mkdir(parents=True)
        for i in range(4):
            Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(
                root / leaf / f"{i}.png"
            )
    return root


def clean_env(tmp_path: Path) -> dict[str, str]:
    """No W&B key, settings or silencing variables; W&B's files under tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    home = tmp_path / "home"
    home.mkdir()
    return {
        **env,
        "HOME": str(home),
        "WANDB_CONFIG_DIR": str(home / ".config" / "wandb"),
        "WANDB_CACHE_DIR": str(home / "cache"),
        "WANDB_DATA_DIR": str(home / "data"),
        "WANDB_DIR": str(tmp_path),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "FORCE_COLOR": "1",  # styled as on a terminal: the filters must see through the codes
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }


def test_fit_output_has_no_zero_flops_line_and_no_wandb_lines_that_repeat_hmc(tmp_path):
    run = tmp_path / "run"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"""\
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  max_epochs: 1
  default_root_dir: {run}
  log_every_n_steps: 1
  logger:
    class_path: hmc.training.WandbLogger
    init_args: {{save_dir: {run}, project: hmc-test, name: output}}
  callbacks:
    - class_path: pytorch_lightning.callbacks.RichProgressBar
checkpoint:
  dirpath: {run / "checkpoints"}
model:
  backbone: test_resnet
  head: hrn
  head_kwargs: {{mid_channels: 8, block_channels: 16, hidden: 16, feature_dim: 8}}
data:
  dataset: folder
  root: {write_tree(tmp_path / "tree")}
  batch_size: 4
  num_workers: 0
  image_size: 16
  preset: small
  val_fraction: 0.25
"""
    )
    proc = subprocess.run(
        [sys.executable, "-m", "hmc.cli", "fit", "--config", str(cfg)], cwd=tmp_path,
        env=clean_env(tmp_path), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", proc.stdout + proc.stderr)
    assert "Total params" in text and "Modules in train mode" in text  # the summary stays
    assert "Total FLOPs" not in text and "Total Flops" not in text
    assert "isinstance(treespec, LeafSpec)" not in text
    assert text.count("W&B offline: no W&B API key") == 1  # hmc's notice, once
    assert text.count("was logged offline; upload it with: wandb sync") == 1
    sync_dir = next((run / "wandb").glob("offline-run-*"))
    assert text.count(f"wandb sync {sync_dir}") == 2  # hmc's two lines, not W&B's third
    for line in (
        "Tracking run with wandb version",
        "W&B syncing is set to `offline`",
        "Run data is saved locally",
        "View this run in the terminal",
        "You can sync this run to the cloud",
        "Find logs at",
    ):
        assert line not in text
