"""``HMCDataModule``: any hmc dataset, split, relabelled, transformed and batched for Lightning."""

from __future__ import annotations

import os
import random
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_info
from torch.utils.data import DataLoader, DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader

from hmc.checks import check_choice
from hmc.data import (
    DATASETS,
    HierarchicalDataset,
    ImageFileDataset,
    ImagePaths,
    RelabelConfig,
    balanced_weights,
    build_transforms,
    decode_size,
    level_counts,
    limit_per_class,
    skip_bad_collate,
    train_val_split,
)
from hmc.data.samplers import EpochIterator, EpochSampler, SeededSamples
from hmc.data.transforms import PRESETS
from hmc.hierarchy import Hierarchy
from hmc.training.artifacts import resolve_hierarchy

__all__ = ["DistributedEpochSampler", "HMCDataModule"]

NO_RELABEL = RelabelConfig()  # frozen, so sharing the default is safe


class HMCDataModule(pl.LightningDataModule):
    """Builds train/val/test/predict loaders for any dataset of :data:`hmc.data.DATASETS`.

    Args:
        dataset: ``cub200``, ``nabirds``, ``aircraft``, ``cars``, ``cifar100``,
            ``fashion-mnist``, ``csv`` or ``folder``.
        root: the dataset's folder (see each dataset class). For ``csv``: one CSV/TSV file
            (train and val carved from it) or a folder with ``train.csv`` and optionally
            ``val.csv`` / ``test.csv``. For ``folder``: the class tree, or a folder with
            ``train/`` and optionally ``val/`` / ``test/`` trees.
        hierarchy: a shipped name, a file or a ``wandb:`` reference; default the dataset's
            own (``cub200``, ..., NABirds' files, the folder tree). Required for ``csv``.
        batch_size: per step, every stage.
        num_workers: loader processes; default min(4, CPUs - 1).
        image_size: output side; default the preset's (448 paper, 224 imagenet, 64 small;
            32 for cifar100 and fashion-mnist).
        preset: ``paper``, ``imagenet`` or ``small`` (see :func:`build_transforms`); default
            ``small`` for cifar100/fashion-mnist, ``paper`` otherwise.
        relabel: coarse-label simulation applied to the training split only.
        val_fraction: per-class fraction of the official training set held out for
            validation (by :func:`hmc.data.train_val_split`; datasets with an official val
            split, such as aircraft, ignore it). 0 = no validation.
        balanced_sampling: a level name: sample training batches so every node of that level
            is drawn equally often (with replacement).
        max_per_class: train on at most this many samples per label (the first ones, in the
            dataset's order), for CPU demos; a val split carved from the training data is
            carved after this limit. Official val and test splits stay complete.
        predict_paths: image files or folders for ``predict`` (found as ``hmc predict`` finds
            them: :func:`hmc.data.list_images`).
        on_bad_sample: ``raise`` or ``skip`` (a skipped sample is warned about once;
            predict always raises, so that predictions line up with ``predict_dataset.paths``).
        seed: seeds the train/val division (not the relabelling: see ``relabel.seed``).
        download: let ``prepare_data`` download the dataset (cifar100, fashion-mnist and
            aircraft can) when absent. Nothing is ever downloaded in ``__init__``.
        dataset_kwargs: extra keyword arguments for the dataset class (e.g.
            ``{"crop_to_bbox": true}`` for cub200, ``{"label_column": "species"}`` for csv).
        transform_kwargs: extra keyword arguments for :func:`hmc.data.build_transforms`
            (``{"data_config": {...}}``, a timm data config for the ``imagenet`` preset);
            stored in checkpoints with the preset and size.

    ``.hierarchy`` is set in ``__init__`` (LightningCLI links it to the model).

    Resume is exact: the training loader is torchdata's ``StatefulDataLoader`` over an
    :class:`hmc.data.samplers.EpochSampler` (order and augmentation seeds a function of the
    epoch), so a checkpoint taken mid-epoch resumes at the next batch; and the checkpoint keeps
    the python, numpy and torch RNG states (``state_dict``), restored on resume. Under DDP each
    process draws its share of that order (:class:`DistributedEpochSampler`), resumable too.
    """

    def __init__(
        self,
        dataset: str = "fashion-mnist",
        root: str = "data",
        hierarchy: str | None = None,
        batch_size: int = 32,
        num_workers: int | None = None,
        image_size: int | None = None,
        preset: str | None = None,
        relabel: RelabelConfig = NO_RELABEL,
        val_fraction: float = 0.1,
        balanced_sampling: str | None = None,
        max_per_class: int | None = None,
        predict_paths: list[str] | None = None,
        on_bad_sample: str = "raise",
        seed: int = 0,
        download: bool = False,
        dataset_kwargs: dict | None = None,
        transform_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        check_choice("dataset", dataset, list(DATASETS))
        check_choice("on_bad_sample", on_bad_sample, ("raise", "skip"))
        if preset is not None:
            check_choice("preset", preset, PRESETS)
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(
                f"Expected argument `val_fraction` to be in [0, 1), but got {val_fraction}"
            )
        if batch_size < 1:
            raise ValueError(f"Expected argument `batch_size` to be >= 1, but got {batch_size}")
        self.save_hyperparameters(
            ignore=["hierarchy"] if isinstance(hierarchy, Hierarchy) else None
        )
        if is_dataclass(relabel):  # plain values only: checkpoints load with weights_only=True
            self.hparams["relabel"] = asdict(relabel)
        self.dataset_name = dataset
        self.dataset_class = cls = DATASETS[dataset]
        self.root = Path(root).expanduser()
        self.batch_size = batch_size
        self.num_workers = _default_workers() if num_workers is None else int(num_workers)
        self.preset = preset or cls.default_preset
        same_preset = preset in (None, cls.default_preset)
        self.image_size = image_size or (cls.default_image_size if same_preset else None)
        self.relabel = relabel if isinstance(relabel, RelabelConfig) else RelabelConfig(**relabel)
        self.val_fraction = val_fraction
        self.max_per_class = max_per_class
        self.predict_paths = [predict_paths] if isinstance(predict_paths, str) else predict_paths
        self.on_bad_sample = on_bad_sample
        self.seed = seed
        self.download = download
        self.dataset_kwargs = dict(dataset_kwargs or {})
        self.transform_kwargs = dict(transform_kwargs or {})
        if isinstance(hierarchy, Hierarchy):
            self.hierarchy = hierarchy
        elif hierarchy is not None:
            self.hierarchy = resolve_hierarchy(hierarchy)
        else:
            self.hierarchy = cls.default_hierarchy(self.root)
        self.relabel.check(self.hierarchy)
        self.balanced_sampling = balanced_sampling
        if balanced_sampling is not None:
            self.hierarchy.level_number(balanced_sampling)
        self.train_dataset: HierarchicalDataset | None = None
        self.val_dataset: HierarchicalDataset | None = None
        self.test_dataset: HierarchicalDataset | None = None
        self.predict_dataset: ImagePaths | None = None
        self.label_counts: dict[str, dict[str, int]] = {}
        self.order_seed: int | None = None  # the training order's; kept in checkpoints
        self._train_loader_state: dict[str, Any] | None = None  # a resumed loader's position

    # ------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs beyond the loops' state: the training order's seed and the
        global RNG states (python, numpy, torch) at the moment of saving (plain values, so
        checkpoints load with ``weights_only=True``)."""
        np_state = np.random.get_state(legacy=False)  # noqa: NPY002 (the global one)
        version, internal, gauss = random.getstate()
        loader = getattr(self.trainer, "train_dataloader", None) if self.trainer else None
        return {
            "order_seed": self.order_seed,
            # Lightning saves it too, but restores it only when configure_optimizers has not
            # built the loader already (estimated_stepping_batches does): restored here.
            "train_loader": loader.state_dict() if isinstance(loader, StatefulDataLoader) else None,
            "rng": {
                "python": [version, list(internal), gauss],
                "numpy": {**np_state, "state": {"key": np_state["state"]["key"].tolist(),
                                                 "pos": int(np_state["state"]["pos"])}},
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
        }  # fmt: skip

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.order_seed = state_dict.get("order_seed")
        self._train_loader_state = state_dict.get("train_loader")
        rng = state_dict.get("rng")
        if not rng:  # a checkpoint written before hmc saved RNG states
            return
        version, internal, gauss = rng["python"]
        random.setstate((version, tuple(internal), gauss))
        np_state = rng["numpy"]
        key = np.asarray(np_state["state"]["key"], dtype=np.uint32)
        np.random.set_state({**np_state, "state": {"key": key, "pos": np_state["state"]["pos"]}})  # noqa: NPY002
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    # ------------------------------------------------------------ Lightning
    def prepare_data(self) -> None:
        """The dataset's own ``prepare`` (e.g. decompress the Debian Fashion-MNIST files, or
        download with ``download=True``). Runs on one process only."""
        self.dataset_class.prepare(self.root, self.download, **self.dataset_kwargs)

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", None) and self.train_dataset is None:
            train, val = self._train_val()
            if self.relabel.ratio > 0:
                train = train.with_targets(self.relabel.apply(self.hierarchy, train.targets))
            self.train_dataset = self._report("train", train)
            if self.val_dataset is None and len(val):
                self.val_dataset = self._report("val", val)
        if stage == "validate" and self.val_dataset is None:
            val = self._train_val()[1]
            if len(val):  # empty when val_fraction=0 and the dataset has no val split
                self.val_dataset = self._report("val", val)
        if stage in ("test", None) and self.test_dataset is None:
            try:
                self.test_dataset = self._report("test", self._open("test", train=False))
            except FileNotFoundError:
                if stage == "test":
                    raise
        if stage in ("predict", None) and self.predict_dataset is None and self.predict_paths:
            # Always "raise": a skipped image would shift predictions against .paths.
            self.predict_dataset = ImagePaths(
                self.hierarchy, self.predict_paths, transform=self._transform(train=False)
            )
            self.predict_dataset.decode_size = decode_size(self.preset, self.image_size)

    def train_dataloader(self) -> StatefulDataLoader:
        ds = self._require("train_dataset", "fit")
        weights = None
        if self.balanced_sampling is not None:
            weights = balanced_weights(self.hierarchy, ds.targets, self.balanced_sampling)
        if self.order_seed is None:  # seed_everything's seed; a resumed run has the saved one
            self.order_seed = torch.initial_seed()
        sampler = EpochSampler(
            len(ds), seed=self.order_seed, weights=weights, epoch_of=self._current_epoch
        )
        shards = self.trainer.distributed_sampler_kwargs if self.trainer is not None else None
        if shards and shards["num_replicas"] > 1:
            sampler = DistributedEpochSampler(sampler, shards["num_replicas"], shards["rank"])
        # drop_last in training only: a last batch of one breaks BatchNorm.
        loader = self._loader(
            SeededSamples(ds),
            sampler=sampler,
            drop_last=len(ds) > self.batch_size,
            persistent=True,
            stateful=True,
        )
        state, self._train_loader_state = self._train_loader_state, None
        # An epoch-end state (every batch drawn) resumes at the next epoch's start anyway;
        # restored, it would make Lightning end that next epoch at once.
        if state and not state["_iterator_finished"] and batches_drawn(state) < len(loader):
            loader.load_state_dict(state)
        return loader

    def val_dataloader(self) -> DataLoader | list:
        if self.val_dataset is None:
            self.setup("validate")
        if self.val_dataset is None:
            return []  # val_fraction=0: no validation
        return self._loader(self.val_dataset, persistent=True)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._require("test_dataset", "test"))

    def predict_dataloader(self) -> DataLoader:
        if not self.predict_paths:
            raise ValueError("predict needs `predict_paths` (image files or folders)")
        return self._loader(self._require("predict_dataset", "predict"))

    def transform_config(self) -> dict:
        """The evaluation transform as ``build_transforms`` keywords (stored in checkpoints so
        that predictions preprocess images as evaluation did)."""
        return {"preset": self.preset, "image_size": self.image_size, **self.transform_kwargs}

    # --------------------------------------------------------------- helpers
    def _current_epoch(self) -> int:
        trainer = self.trainer  # None outside a Trainer: epoch 0
        return trainer.current_epoch if trainer is not None else 0

    def _require(self, attr: str, stage: str) -> HierarchicalDataset:
        if getattr(self, attr) is None:
            self.setup(stage)
        return getattr(self, attr)

    def _loader(self, ds, *, sampler=None, drop_last=False, persistent=False, stateful=False):
        workers = self.num_workers
        # The training loader draws its worker seeds from its own generator, not the global
        # RNG, so that creating it at a resume leaves the restored RNG states untouched.
        extra = {"generator": torch.Generator().manual_seed(0)} if stateful else {}
        return (StatefulDataLoader if stateful else DataLoader)(
            ds,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=persistent and workers > 0,
            drop_last=drop_last,
            collate_fn=skip_bad_collate if ds.on_bad_sample == "skip" else None,
            **extra,
        )

    def _transform(self, train: bool):
        return build_transforms(
            self.preset, train=train, image_size=self.image_size, **self.transform_kwargs
        )

    def _report(self, split: str, ds: HierarchicalDataset) -> HierarchicalDataset:
        self.label_counts[split] = level_counts(self.hierarchy, ds.targets)
        note = ""
        if split == "train" and self.relabel.ratio > 0:
            r = self.relabel
            note = f" after relabelling ratio={r.ratio} to={r.to!r} selection={r.selection!r}"
        rank_zero_info(f"hmc.data {split}{note}: {ds!r}")
        return ds

    def _open(self, split: str, train: bool) -> HierarchicalDataset:
        """The dataset's official ``split``, with the stage's transform."""
        ds = self.dataset_class.from_split(
            self.root,
            split,
            self.hierarchy,
            transform=self._transform(train),
            on_bad_sample=self.on_bad_sample,
            **self.dataset_kwargs,
        )
        if isinstance(ds, ImageFileDataset):
            ds.decode_size = decode_size(self.preset, self.image_size)
        return ds

    def _train_val(self) -> tuple[HierarchicalDataset, HierarchicalDataset]:
        """(train, val): the official splits where the dataset has a val split, else carved
        from ``trainval`` by ``train_val_split``; train limited to ``max_per_class`` per
        label first."""
        if self.dataset_class.has_val_split(self.root):
            train = limit_per_class(self._open("train", train=True), self.max_per_class)
            return train, self._open("val", train=False)
        pool = limit_per_class(self._open("trainval", train=True), self.max_per_class)
        train, val = train_val_split(pool, self.val_fraction, self.seed)
        val.transform = self._transform(train=False)
        return train, val


class DistributedEpochSampler(DistributedSampler):
    """One process's share of an :class:`~hmc.data.samplers.EpochSampler` epoch under DDP: the
    draws ``rank, rank + num_replicas, ...`` of the whole epoch (wrapped around to equal
    shares, as ``DistributedSampler`` pads), resumable the same way (its iterator's state,
    epoch and position, is in the loader's state).

    Why: Lightning would rebuild the training loader around its own sampler wrapper, and the
    rebuilt loader starts the epoch over instead of at the restored position. A
    ``DistributedSampler`` is kept as it is."""

    def __init__(self, sampler: EpochSampler, num_replicas: int, rank: int) -> None:
        super().__init__(range(len(sampler)), num_replicas=num_replicas, rank=rank, shuffle=False)
        self.sampler = sampler

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Any:
        return EpochIterator(self.shard, self.sampler.current_epoch)

    def shard(self, epoch: int) -> list[tuple[int, int]]:
        """This process's ``(index, sample_seed)`` pairs of epoch ``epoch``, in order."""
        draws = self.sampler.draws(epoch)
        draws += draws[: self.total_size - len(draws)]
        return draws[self.rank : self.total_size : self.num_replicas]


def _default_workers() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(4, max(0, (cpus or 1) - 1))


def batches_drawn(state: dict) -> int:
    """Batches drawn in the epoch, from a StatefulDataLoader state: kept at the top level with
    no workers, as the last snapshot's step plus the steps since it with workers."""
    if "_num_yielded" in state:
        return int(state["_num_yielded"])
    return int(state["_snapshot"]["_snapshot_step"]) + int(state["_steps_since_snapshot"])
