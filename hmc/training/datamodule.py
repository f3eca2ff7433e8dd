"""``HMCDataModule``: any hmc dataset, split, relabelled, transformed and batched for Lightning."""

from __future__ import annotations

import os
from dataclasses import asdict, is_dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from hmc.data._base import (
    ON_BAD_SAMPLE,
    HierarchicalDataset,
    ImageFileDataset,
    check_choice,
    level_counts,
    limit_per_class,
    stratified_split,
)
from hmc.data.aircraft import FGVCAircraft
from hmc.data.birds import CUB200, NABirds
from hmc.data.cars import StanfordCars
from hmc.data.cifar import CIFAR100
from hmc.data.generic import CSVDataset, HierarchyFolder, ImagePaths
from hmc.data.mnist import DEBIAN_DIR, RAW_FILES, FashionMNIST, ensure_raw_files
from hmc.data.relabel import RelabelConfig, relabel_targets
from hmc.data.samplers import HMCDataLoader, _level_number, class_balanced_sampler, skip_bad_collate
from hmc.data.transforms import PRESETS, build_transforms, decode_size
from hmc.hierarchy import Hierarchy
from hmc.training.artifacts import resolve_hierarchy

__all__ = ["DATASETS", "HMCDataModule"]

# name -> (class, default hierarchy (None: read from the data), default preset, default size)
DATASETS: dict[str, tuple[type, str | None, str, int | None]] = {
    "cub200": (CUB200, "cub200", "paper", None),
    "nabirds": (NABirds, None, "paper", None),
    "aircraft": (FGVCAircraft, "aircraft", "paper", None),
    "cars": (StanfordCars, "cars", "paper", None),
    "cifar100": (CIFAR100, "cifar100", "small", 32),
    "fashion-mnist": (FashionMNIST, "fashion-mnist", "small", 32),
    "csv": (CSVDataset, None, "paper", None),
    "folder": (HierarchyFolder, None, "paper", None),
}
NO_RELABEL = RelabelConfig()  # frozen, so sharing the default is safe
# Datasets whose constructor carves train/val from the official training set itself.
_CARVED = (CUB200, NABirds, StanfordCars, CIFAR100, FashionMNIST)


class HMCDataModule(pl.LightningDataModule):
    """Builds train/val/test/predict loaders for any registered dataset.

    Args:
        dataset: one of :data:`DATASETS`: ``cub200``, ``nabirds``, ``aircraft``, ``cars``,
            ``cifar100``, ``fashion-mnist``, ``csv``, ``folder``.
        root: the dataset's folder (see each dataset class). For ``csv``: one CSV/TSV file
            (train and val carved from it) or a folder with ``train.csv`` and optionally
            ``val.csv`` / ``test.csv``. For ``folder``: the class tree, or a folder with
            ``train/`` and optionally ``val/`` / ``test/`` trees.
        hierarchy: a shipped name or a file; default the dataset's own (``cub200``, ...,
            NABirds' files, the folder tree). Required for ``csv``.
        batch_size: per step, every stage.
        num_workers: loader processes; default min(4, CPUs - 1).
        image_size: output side; default the preset's (448 paper, 224 imagenet, 64 small;
            32 for cifar100 and fashion-mnist).
        preset: ``paper``, ``imagenet`` or ``small`` (see :func:`build_transforms`); default
            ``small`` for cifar100/fashion-mnist, ``paper`` otherwise.
        relabel: coarse-label simulation applied to the training split only.
        val_fraction: per-class fraction of the official training set held out for
            validation (aircraft has an official val split and ignores it). 0 = no validation.
        balanced_sampling: a level name: sample training batches so every node of that level
            is drawn equally often (with replacement).
        max_per_class: train on at most this many samples per label (the first ones, in the
            dataset's order), for CPU demos; a val split carved from the training data is
            carved after this limit. Official val and test splits stay complete.
        predict_paths: image files or folders for ``predict``.
        on_bad_sample: ``raise`` or ``skip`` (skipped counts are warned after each pass;
            predict always raises, so that predictions line up with ``predict_dataset.paths``).
        seed: seeds the train/val division (not the relabelling: see ``relabel.seed``).
        download: let ``prepare_data`` download cifar100 / fashion-mnist / aircraft through
            torchvision when absent. Nothing is ever downloaded in ``__init__``.
        dataset_options: extra keyword arguments for the dataset class (e.g.
            ``{"crop_to_bbox": true}`` for cub200, ``{"label_column": "species"}`` for csv).

    ``.hierarchy`` is set in ``__init__`` (LightningCLI links it to the model).
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
        dataset_options: dict | None = None,
    ) -> None:
        super().__init__()
        check_choice("dataset", dataset, list(DATASETS))
        check_choice("on_bad_sample", on_bad_sample, ON_BAD_SAMPLE)
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
        _, default_h, default_preset, default_size = DATASETS[dataset]
        self.dataset_name = dataset
        self.root = Path(root).expanduser()
        self.batch_size = batch_size
        self.num_workers = _default_workers() if num_workers is None else int(num_workers)
        self.preset = preset or default_preset
        self.image_size = image_size or (default_size if preset in (None, default_preset) else None)
        self.relabel = relabel if isinstance(relabel, RelabelConfig) else RelabelConfig(**relabel)
        self.val_fraction = val_fraction
        self.max_per_class = max_per_class
        self.predict_paths = [predict_paths] if isinstance(predict_paths, str) else predict_paths
        self.on_bad_sample = on_bad_sample
        self.seed = seed
        self.download = download
        self.dataset_options = dict(dataset_options or {})
        self.hierarchy: Hierarchy = self._resolve_hierarchy(hierarchy, default_h)
        self.balanced_sampling = balanced_sampling
        if balanced_sampling is not None:
            _level_number(self.hierarchy, balanced_sampling)
        self.train_dataset: HierarchicalDataset | None = None
        self.val_dataset: HierarchicalDataset | None = None
        self.test_dataset: HierarchicalDataset | None = None
        self.predict_dataset: ImagePaths | None = None
        self.label_counts: dict[str, dict[str, int]] = {}

    # ------------------------------------------------------------- hierarchy
    def _resolve_hierarchy(
        self, hierarchy: str | Hierarchy | None, default: str | None
    ) -> Hierarchy:
        if isinstance(hierarchy, Hierarchy):
            return hierarchy
        if hierarchy is not None:
            return resolve_hierarchy(hierarchy)
        if default is not None:
            return resolve_hierarchy(default)
        if self.dataset_name == "nabirds":
            return NABirds.default_hierarchy(self.root)
        if self.dataset_name == "folder":
            return HierarchyFolder.scan(self._folder_sources()["train"])
        raise ValueError(f"dataset {self.dataset_name!r} needs a `hierarchy` (a name or a file)")

    # ------------------------------------------------------------ Lightning
    def prepare_data(self) -> None:
        """Decompress the Debian Fashion-MNIST files, or download (``download=True``) the
        datasets torchvision can fetch. Runs on one process only."""
        name = self.dataset_name
        if name == "fashion-mnist":
            raw = FashionMNIST.raw_folder(self.root)
            system_dir = self.dataset_options.get("system_dir", DEBIAN_DIR)
            files = RAW_FILES["train"] + RAW_FILES["test"]
            try:
                ensure_raw_files(raw, files, system_dir)
                return
            except FileNotFoundError:
                if not self.download:
                    raise
            from torchvision.datasets import FashionMNIST as TV

            for train in (True, False):
                TV(str(self.root), train=train, download=True)
        elif not self.download:
            return
        elif name == "cifar100":
            from torchvision.datasets import CIFAR100 as TV

            for train in (True, False):
                TV(str(self.root), train=train, download=True)
        elif name == "aircraft":
            from torchvision.datasets import FGVCAircraft as TV

            TV(str(self.root), download=True)
        else:
            raise ValueError(
                f"dataset {name!r} cannot be downloaded automatically; download it by hand and "
                f"extract it under {self.root} (download=True works for cifar100, "
                f"fashion-mnist and aircraft)"
            )

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", None) and self.train_dataset is None:
            train = self._split("train", train=True)
            cfg = self.relabel
            if cfg.ratio > 0:
                train = train.with_targets(
                    relabel_targets(
                        train.targets, self.hierarchy, cfg.ratio, cfg.to, cfg.selection, cfg.seed
                    )
                )
            self.train_dataset = self._report("train", train)
        if stage in ("fit", "validate", None) and self.val_dataset is None:
            val = self._split("val", train=False)
            if len(val):  # empty when val_fraction=0 and the dataset has no val split
                self.val_dataset = self._report("val", val)
        if stage in ("test", None) and self.test_dataset is None:
            try:
                test = self._split("test", train=False)
            except FileNotFoundError:
                if stage == "test":
                    raise
                test = None
            if test is not None:
                self.test_dataset = self._report("test", test)
        if stage in ("predict", None) and self.predict_dataset is None and self.predict_paths:
            # Always "raise": a skipped image would shift predictions against .paths.
            self.predict_dataset = ImagePaths(
                self.predict_paths, self.hierarchy, transform=self._transform(train=False)
            )
            self.predict_dataset.decode_size = decode_size(self.preset, self.image_size)

    def train_dataloader(self) -> HMCDataLoader:
        ds = self._require("train_dataset", "fit")
        sampler = None
        if self.balanced_sampling is not None:
            sampler = class_balanced_sampler(ds.targets, self.hierarchy, self.balanced_sampling)
        # drop_last in training only: a last batch of one breaks BatchNorm.
        return self._loader(
            ds,
            shuffle=sampler is None,
            sampler=sampler,
            drop_last=len(ds) > self.batch_size,
            persistent=True,
        )

    def val_dataloader(self) -> HMCDataLoader | list:
        if self.val_dataset is None:
            self.setup("validate")
        if self.val_dataset is None:
            return []  # val_fraction=0: no validation
        return self._loader(self.val_dataset, persistent=True)

    def test_dataloader(self) -> HMCDataLoader:
        return self._loader(self._require("test_dataset", "test"))

    def predict_dataloader(self) -> HMCDataLoader:
        if not self.predict_paths:
            raise ValueError("predict needs `predict_paths` (image files or folders)")
        return self._loader(self._require("predict_dataset", "predict"))

    def transform_config(self) -> dict:
        """The evaluation transform as ``build_transforms`` keywords (stored in checkpoints so
        that predictions preprocess images as evaluation did)."""
        out: dict = {"preset": self.preset, "image_size": self.image_size}
        if self.dataset_options.get("data_config"):
            out["data_config"] = dict(self.dataset_options["data_config"])
        return out

    # --------------------------------------------------------------- helpers
    def _require(self, attr: str, stage: str) -> HierarchicalDataset:
        if getattr(self, attr) is None:
            self.setup(stage)
        return getattr(self, attr)

    def _loader(self, ds, *, shuffle=False, sampler=None, drop_last=False, persistent=False):
        skip = ds.on_bad_sample == "skip"
        workers = self.num_workers
        return HMCDataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=persistent and workers > 0,
            drop_last=drop_last,
            collate_fn=skip_bad_collate if skip else None,
        )

    def _transform(self, train: bool):
        opts = self.dataset_options.get("data_config")
        return build_transforms(
            self.preset, train=train, image_size=self.image_size, data_config=opts
        )

    def _report(self, split: str, ds: HierarchicalDataset) -> HierarchicalDataset:
        self.label_counts[split] = level_counts(ds.targets, self.hierarchy)
        note = ""
        if split == "train" and self.relabel.ratio > 0:
            r = self.relabel
            note = f" after relabelling ratio={r.ratio} to={r.to!r} selection={r.selection!r}"
        rank_zero_info(f"hmc.data {split}{note}: {ds!r}")
        return ds

    def _options(self) -> dict:
        return {k: v for k, v in self.dataset_options.items() if k != "data_config"}

    def _split(self, split: str, train: bool) -> HierarchicalDataset:
        """The dataset of ``split`` ("train", "val" or "test") with its transform."""
        ds = self._build(split, train)
        if isinstance(ds, ImageFileDataset):
            ds.decode_size = decode_size(self.preset, self.image_size)
        return ds

    def _build(self, split: str, train: bool) -> HierarchicalDataset:
        """Official test and val splits as they are; train (and val, where the dataset has
        none) from the official training data, limited to ``max_per_class`` per label first."""
        cls = DATASETS[self.dataset_name][0]
        common = dict(transform=self._transform(train), on_bad_sample=self.on_bad_sample)
        common.update(self._options())
        if cls is FashionMNIST:
            common.setdefault("system_dir", DEBIAN_DIR)
        if cls in _CARVED or cls is FGVCAircraft:

            def make(s: str) -> HierarchicalDataset:
                return cls(self.root, split=s, hierarchy=self.hierarchy, **common)

            if split == "test" or cls is FGVCAircraft:  # aircraft has an official val split
                ds = make(split)
                return limit_per_class(ds, self.max_per_class) if split == "train" else ds
            return self._carve(make("trainval"), split)

        if cls is CSVDataset:
            sources = self._csv_files()

            def load(path: Path) -> HierarchicalDataset:
                return CSVDataset(path, self.hierarchy, **common)

        else:
            sources = self._folder_sources()

            def load(path: Path) -> HierarchicalDataset:
                return HierarchyFolder(path, self.hierarchy, **common)

        if split == "test":
            if "test" not in sources:
                raise FileNotFoundError(
                    f"{self.dataset_name}: no test split under {self.root} (expected "
                    f"{'test.csv' if cls is CSVDataset else 'test/'})"
                )
            return load(sources["test"])
        if "val" in sources:
            ds = load(sources[split])
            return limit_per_class(ds, self.max_per_class) if split == "train" else ds
        return self._carve(load(sources["train"]), split)

    def _carve(self, pool: HierarchicalDataset, split: str) -> HierarchicalDataset:
        """Train or val from a training pool: first ``max_per_class`` per label, then the
        seeded per-class division (the same one the dataset classes make themselves)."""
        pool = limit_per_class(pool, self.max_per_class)
        keep, held = stratified_split(pool.targets, self.val_fraction, self.seed)
        out = pool.subset(keep if split == "train" else held)
        if hasattr(out, "split"):
            out.split = split  # the repr names the split it now is
        return out

    def _csv_files(self) -> dict[str, Path]:
        if self.root.is_file():
            return {"train": self.root}
        files = {}
        for split in ("train", "val", "test"):
            for ext in (".csv", ".tsv"):
                if (self.root / f"{split}{ext}").is_file():
                    files[split] = self.root / f"{split}{ext}"
        if "train" not in files:
            raise FileNotFoundError(
                f"csv: train.csv not found under {self.root} (root is a CSV/TSV file, or a "
                f"folder with train.csv and optionally val.csv and test.csv)"
            )
        return files

    def _folder_sources(self) -> dict[str, Path]:
        """{split: tree}: root's train/ (val/, test/) trees when it is split so, else
        {"train": root}."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"folder: root folder {self.root} not found")
        subdirs = {p.name for p in self.root.iterdir() if p.is_dir()}
        if "train" in subdirs and subdirs <= {"train", "val", "test"}:
            return {s: self.root / s for s in subdirs}
        return {"train": self.root}


def _default_workers() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(4, max(0, (cpus or 1) - 1))
