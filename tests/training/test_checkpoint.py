"""Checkpointing as configs/base.yaml sets it up: Lightning's own ModelCheckpoint (``checkpoint:``,
which ``hmc fit`` adds), the periodic StepCheckpoint (``step_checkpoint:``) and Lightning's
SIGTERM handling, on a tiny real HMCModule."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader, TensorDataset

from hmc import Hierarchy
from hmc.training.callbacks import StepCheckpoint
from hmc.training.module import HMCModule

BASE = Path(__file__).resolve().parents[2] / "configs" / "base.yaml"
TINY_HEAD = {"mid_channels": 8, "block_channels": 16, "hidden": 16, "feature_dim": 8}


def base_checkpoint(dirpath: Path) -> ModelCheckpoint:
    """The ModelCheckpoint of configs/base.yaml, in ``dirpath`` (what a recipe sets)."""
    return ModelCheckpoint(dirpath=dirpath, **yaml.safe_load(BASE.read_text())["checkpoint"])


def base_step_checkpoint(dirpath: Path, **kw) -> StepCheckpoint:
    """configs/base.yaml's StepCheckpoint in ``dirpath``, with ``kw`` (its trigger) on top."""
    return StepCheckpoint(
        dirpath=dirpath, **{**yaml.safe_load(BASE.read_text())["step_checkpoint"], **kw}
    )


def toy() -> Hierarchy:
    rows = [("a", "a1"), ("a", "a2"), ("b", "b1"), ("b", "b2")]
    return Hierarchy.from_paths(rows, level_names=["coarse", "fine"])


def loader(h: Hierarchy, n: int = 20) -> DataLoader:
    leaves = h.indices(h.leaves)
    targets = leaves[torch.arange(n) % len(leaves)]
    images = torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(images, targets), batch_size=10)  # 2 steps per epoch


def fit(tmp_path: Path, callbacks: list, ckpt_path: str | None = None, **kw) -> pl.Trainer:
    h = toy()
    kw = {"max_epochs": 2, "logger": False, **kw}
    t = pl.Trainer(
        default_root_dir=tmp_path, accelerator="cpu", enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, callbacks=callbacks, **kw,
    )  # fmt: skip
    t.fit(
        HMCModule(h, backbone="test_resnet", head_kwargs=TINY_HEAD), loader(h), ckpt_path=ckpt_path
    )
    return t


def step_of(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


@pytest.mark.parametrize(("limits", "step"), [({}, 4), ({"max_steps": 3}, 3)])
def test_last_ckpt_holds_the_final_step_and_is_the_only_file(tmp_path, limits, step):
    folder = tmp_path / "checkpoints"
    fit(tmp_path, [base_checkpoint(folder)], **limits)  # 2 epochs x 2 steps, or cut mid-epoch
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]
    assert step_of(folder / "last.ckpt") == step


def test_sigterm_writes_last_ckpt_at_the_stopping_step(tmp_path):
    """A real SIGTERM: Lightning's handler stops the loop after the current batch and raises
    SIGTERMException; the checkpoint's save_on_exception then writes last.ckpt."""

    class Term(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 3:
                os.kill(os.getpid(), signal.SIGTERM)

    folder = tmp_path / "checkpoints"
    with pytest.raises(SIGTERMException):
        fit(tmp_path, [base_checkpoint(folder), Term()], max_epochs=5)
    assert step_of(folder / "last.ckpt") == 3  # not 2, the last epoch end


def test_ckpt_path_last_finds_the_folder_with_a_versioned_logger(tmp_path):
    """`ckpt_path="last"` looks in the checkpoint's `dirpath`, not in the logger's new version
    folder, so a restarted run resumes from where the last one stopped."""
    folder = tmp_path / "checkpoints"

    def run(max_steps: int, **kw) -> pl.Trainer:
        logger = CSVLogger(tmp_path)
        return fit(
            tmp_path,
            [base_checkpoint(folder)],
            max_epochs=5,
            max_steps=max_steps,
            logger=logger,
            **kw,
        )

    run(1)
    t = run(3, ckpt_path="last")
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]
    assert step_of(folder / "last.ckpt") == 3
    assert t.ckpt_path == str(folder / "last.ckpt")
    assert len(list((tmp_path / "lightning_logs").iterdir())) == 2  # two logger versions


def test_step_checkpoint_saves_every_n_steps_but_not_at_an_epoch_last_batch(tmp_path):
    """Lightning resumes a checkpoint of an epoch's last batch (taken before that epoch's
    validation and end) as a finished epoch: StepCheckpoint leaves that batch to the epoch-end
    checkpoint. 3 epochs x 2 steps, every step: saved at steps 1, 3, 5 only."""
    folder = tmp_path / "steps"
    every = StepCheckpoint(dirpath=folder, filename="{step}", every_n_train_steps=1, save_top_k=-1)
    fit(tmp_path, [every], max_epochs=3)
    assert sorted(p.name for p in folder.iterdir()) == [f"step={s}.ckpt" for s in (1, 3, 5)]


def test_base_checkpoints_together_keep_one_last_ckpt_at_the_newest_step(tmp_path):
    """base.yaml's epoch-end checkpoint and its StepCheckpoint (every step here) write the same
    last.ckpt, which always holds the newest state; no other file is left."""
    folder = tmp_path / "checkpoints"

    class Seen(pl.Callback):  # the file as each batch starts (checkpoints save at batch ends)
        steps: list[int | None] = []

        def on_train_batch_start(self, trainer, *args):
            last = folder / "last.ckpt"
            self.steps.append(step_of(last) if last.exists() else None)

    seen = Seen()
    step = base_step_checkpoint(folder, every_n_train_steps=1)
    fit(tmp_path, [base_checkpoint(folder), step, seen], max_epochs=2)  # 2 steps per epoch
    assert seen.steps == [None, 1, 2, 3]  # 1, 3: StepCheckpoint; 2: the end of epoch 0
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]
    assert step_of(folder / "last.ckpt") == 4
