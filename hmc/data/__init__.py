"""Datasets whose targets are hierarchy node columns, coarse-label simulation, transforms,
samplers. No Lightning: :class:`hmc.training.HMCDataModule` wraps these for Lightning.

Every dataset yields ``(image, target)`` with ``target`` the column of the observed label's
node at any depth, and has ``.hierarchy``, ``.targets`` ([n] long) and a one-line repr with
the number of labels per level.
"""

from __future__ import annotations

from hmc.data._base import (
    ArrayDataset,
    BadSampleError,
    HierarchicalDataset,
    ImageFileDataset,
    level_counts,
    limit_per_class,
    pil_loader,
    stratified_split,
    train_val_split,
)
from hmc.data._layout import IMAGE_SUFFIXES, DuplicateRowsWarning, list_images
from hmc.data.aircraft import FGVCAircraft
from hmc.data.birds import CUB200, NABirds
from hmc.data.cars import StanfordCars
from hmc.data.cifar import CIFAR100
from hmc.data.generic import CSVDataset, HierarchyFolder, ImagePaths
from hmc.data.mnist import FashionMNIST
from hmc.data.relabel import RelabelConfig, relabel_targets
from hmc.data.samplers import (
    SkippedSamplesWarning,
    balanced_weights,
    class_balanced_sampler,
    skip_bad_collate,
)
from hmc.data.transforms import build_transforms, decode_size

#: The datasets HMCDataModule(dataset=...) knows, by name. Each class answers for itself:
#: default_hierarchy(root), prepare(root, download), has_val_split(root), from_split(...).
DATASETS: dict[str, type[HierarchicalDataset]] = {
    "cub200": CUB200,
    "nabirds": NABirds,
    "aircraft": FGVCAircraft,
    "cars": StanfordCars,
    "cifar100": CIFAR100,
    "fashion-mnist": FashionMNIST,
    "csv": CSVDataset,
    "folder": HierarchyFolder,
}

__all__ = [
    "DATASETS",
    "IMAGE_SUFFIXES",
    "ArrayDataset",
    "BadSampleError",
    "CIFAR100",
    "CSVDataset",
    "CUB200",
    "DuplicateRowsWarning",
    "FGVCAircraft",
    "FashionMNIST",
    "HierarchicalDataset",
    "HierarchyFolder",
    "ImageFileDataset",
    "ImagePaths",
    "NABirds",
    "RelabelConfig",
    "SkippedSamplesWarning",
    "StanfordCars",
    "balanced_weights",
    "build_transforms",
    "class_balanced_sampler",
    "decode_size",
    "level_counts",
    "limit_per_class",
    "list_images",
    "pil_loader",
    "relabel_targets",
    "skip_bad_collate",
    "stratified_split",
    "train_val_split",
]
