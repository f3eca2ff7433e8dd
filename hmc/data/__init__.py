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
    BadSampleLog,
    HierarchicalDataset,
    ImageFileDataset,
    level_counts,
    limit_per_class,
    stratified_split,
)
from hmc.data.aircraft import FGVCAircraft
from hmc.data.birds import CUB200, NABirds
from hmc.data.cars import StanfordCars
from hmc.data.cifar import CIFAR100
from hmc.data.generic import CSVDataset, HierarchyFolder, ImagePaths
from hmc.data.mnist import FashionMNIST
from hmc.data.relabel import RelabelConfig, relabel_targets
from hmc.data.samplers import (
    HMCDataLoader,
    SkippedSamplesWarning,
    balanced_weights,
    class_balanced_sampler,
    skip_bad_collate,
)
from hmc.data.transforms import build_transforms

__all__ = [
    "ArrayDataset",
    "BadSampleError",
    "BadSampleLog",
    "CIFAR100",
    "CSVDataset",
    "CUB200",
    "FGVCAircraft",
    "FashionMNIST",
    "HMCDataLoader",
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
    "level_counts",
    "limit_per_class",
    "relabel_targets",
    "skip_bad_collate",
    "stratified_split",
]
