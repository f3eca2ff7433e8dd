"""Exact resume, in process: the training order (EpochSampler), per-sample augmentation seeds
(SeededSamples), HMCDataModule's RNG and loader state in the checkpoint, and a fit stopped at
a mid-epoch checkpoint with one loader worker then resumed, against the same fit uninterrupted.
(The SIGKILLed ``hmc fit`` subprocess: tests/test_e2e.py.)"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import Dataset

from hmc.data.samplers import EpochSampler, SeededSamples
from hmc.training.datamodule import HMCDataModule
from hmc.training.module import HMCModule

TINY_HEAD = {"mid_channels": 8, "block_channels": 16, "hidden": 16, "feature_dim": 8}


# ------------------------------------------------------------------------- sampler
def test_epoch_sampler_order_is_a_function_of_seed_and_epoch():
    a, b = EpochSampler(20, seed=3), EpochSampler(20, seed=3)
    first = list(a)
    assert first == list(b) and sorted(i for i, _ in first) == list(range(20))
    a.set_epoch(1)
    assert list(a) != first and sorted(i for i, _ in a) == list(range(20))
    assert list(EpochSampler(20, seed=4)) != first


def test_epoch_sampler_iterator_resumes_at_its_position_and_epoch():
    sampler = EpochSampler(12, seed=0)
    sampler.set_epoch(2)
    it = iter(sampler)
    head = [next(it) for _ in range(5)]
    state = it.state_dict()
    sampler.set_epoch(7)  # a rebuilt loader may see another epoch: the state fixes it
    again = iter(sampler)
    again.load_state_dict(state)
    sampler.set_epoch(2)
    assert head + list(again) == list(sampler)


def test_epoch_sampler_weights_draw_only_weighted_samples():
    weights = torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0])
    drawn = {i for i, _ in EpochSampler(5, seed=0, weights=weights)}
    assert drawn <= {1, 3, 4}
    with pytest.raises(ValueError, match="3 weights for 5 samples"):
        EpochSampler(5, weights=torch.ones(3))


@pytest.mark.parametrize("n", [12, 13])
def test_distributed_epoch_sampler_shares_the_epoch_and_resumes(n):
    from hmc.training.datamodule import DistributedEpochSampler

    shards = [DistributedEpochSampler(EpochSampler(n, seed=1), 3, rank) for rank in range(3)]
    for s in shards:
        s.set_epoch(2)
    whole = EpochSampler(n, seed=1).draws(2)
    got = [list(s) for s in shards]
    assert {len(g) for g in got} == {-(-n // 3)}  # equal shares, padded by wrapping around
    assert [d for g in zip(*got, strict=True) for d in g][:n] == whole
    it = iter(shards[1])
    head = [next(it), next(it)]
    state = it.state_dict()
    shards[1].set_epoch(5)  # a rebuilt loader may see another epoch: the state fixes it
    again = iter(shards[1])
    again.load_state_dict(state)
    assert head + list(again) == got[1]


class _Noisy(Dataset):
    """Each item draws from torch, numpy and python's global RNGs (as augmentations do)."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> tuple[float, float, float]:
        return torch.rand(()).item(), float(np.random.rand()), random.random()  # noqa: NPY002


def test_seeded_samples_repeat_with_the_seed_and_leave_the_global_rngs_alone():
    ds = SeededSamples(_Noisy())
    torch.manual_seed(0)
    before = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()  # noqa: NPY002
    one = ds[(1, 42)]
    assert ds[(1, 42)] == one and ds[(1, 43)] != one
    assert torch.equal(torch.get_rng_state(), before[0])
    assert (np.random.get_state()[1] == before[1]).all()  # noqa: NPY002
    assert random.getstate() == before[2]
    assert len(ds) == 4 and len(ds[1]) == 3  # a plain index reads the sample unseeded


# ---------------------------------------------------------------------- datamodule
def write_tree(root: Path, per_class: int = 6) -> Path:
    """A HierarchyFolder tree a/{a1,a2}, b/{b1,b2} of 16 px PNGs (class = a bright corner)."""
    rng = np.random.default_rng(0)
    for k, leaf in enumerate(["a/a1", "a/a2", "b/b1", "b/b2"]):
        (root / leaf).mkdir(parents=True)
        for i in range(per_class):
            img = (rng.random((16, 16, 3)) * 80).astype(np.uint8)
            img[8 * (k // 2) : 8 * (k // 2) + 8, 8 * (k % 2) : 8 * (k % 2) + 8] = 255
            Image.fromarray(img).save(root / leaf / f"{i}.png")
    return root


def datamodule(root: Path, workers: int = 0) -> HMCDataModule:
    return HMCDataModule(
        "folder", root=str(root), batch_size=4, num_workers=workers, image_size=16,
        preset="small", val_fraction=0.25, balanced_sampling="level_1",
    )  # fmt: skip


def test_datamodule_state_restores_rngs_and_loads_with_weights_only(tmp_path):
    dm = datamodule(write_tree(tmp_path / "tree"))
    torch.manual_seed(5)
    np.random.seed(5)  # noqa: NPY002
    random.seed(5)
    buffer = io.BytesIO()
    torch.save(dm.state_dict(), buffer)
    want = torch.rand(3), np.random.rand(3), random.random()  # noqa: NPY002
    buffer.seek(0)
    dm.load_state_dict(torch.load(buffer, weights_only=True))
    got = torch.rand(3), np.random.rand(3), random.random()  # noqa: NPY002
    assert torch.equal(got[0], want[0]) and (got[1] == want[1]).all() and got[2] == want[2]


class _Stop(Exception):
    pass


class _StopAt(pl.Callback):
    """Raises at the start of step ``step`` (after the checkpoint of the step before)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise _Stop


def fit(root: Path, folder: Path, workers: int, stop_at: int | None = None, ckpt=None):
    pl.seed_everything(0)
    dm = datamodule(root, workers)
    model = HMCModule(dm.hierarchy, backbone="test_resnet", head_kwargs=TINY_HEAD, lr=0.05)
    callbacks = [
        ModelCheckpoint(
            dirpath=folder, filename="last", every_n_train_steps=2, enable_version_counter=False
        )
    ]
    if stop_at is not None:
        callbacks.append(_StopAt(stop_at))
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, callbacks=callbacks,
        default_root_dir=folder,
    )  # fmt: skip
    if stop_at is None:
        trainer.fit(model, dm, ckpt_path=ckpt)
    else:
        with pytest.raises(_Stop):
            trainer.fit(model, dm, ckpt_path=ckpt)
    return trainer, {k: v for k, v in model.state_dict().items() if v.is_floating_point()}


@pytest.mark.parametrize("workers", [1])
def test_a_fit_resumed_mid_epoch_ends_with_the_uninterrupted_weights(tmp_path, workers):
    """18 training images, 4 per batch, balanced sampling: 4 steps per epoch. Stopped after the
    step-2 checkpoint (mid-epoch), resumed: bit-identical weights (1e-6 allowed)."""
    root = write_tree(tmp_path / "tree")
    _, want = fit(root, tmp_path / "a", workers)
    stopped, _ = fit(root, tmp_path / "b", workers, stop_at=3)
    assert stopped.global_step == 3
    resumed, got = fit(root, tmp_path / "b", workers, ckpt=str(tmp_path / "b" / "last.ckpt"))
    assert resumed.global_step == 8
    for key in want:
        assert torch.allclose(got[key], want[key], rtol=0, atol=1e-6), key


@pytest.mark.parametrize("workers", [0, 1])
def test_batches_drawn_are_read_from_either_loader_state_format(workers):
    from torchdata.stateful_dataloader import StatefulDataLoader

    from hmc.training.datamodule import batches_drawn

    loader = StatefulDataLoader(list(range(20)), batch_size=2, num_workers=workers)
    it = iter(loader)
    for _ in range(3):
        next(it)
    assert batches_drawn(loader.state_dict()) == 3
