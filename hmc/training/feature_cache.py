"""``FeatureCache``: train the backbone's later stages and the head on cached frozen-stage
features (:mod:`hmc.cache`), from ``hmc fit`` with one callback in the config.

    trainer:
      callbacks:
        - class_path: hmc.training.FeatureCache
          init_args: {folder: feature-cache, flip_view: true}
    model:
      freeze: 5        # stages 0..5 frozen (and cached); the later ones and the head train

At the start of fitting, the callback runs the frozen stages once over the training and
validation images (with the evaluation transform; a flip view on request) into
``<folder>/<key>/``, or finds a cache made earlier from the same inputs, and replaces the data
module's train and val datasets by the cached features. Checkpoints hold the whole model, so
testing, ``hmc predict`` and export need no cache.

What is lost: the training transform's random crops, scales and colour changes. Each image is
seen in one fixed view (the evaluation transform), or in two with ``flip_view`` (the
horizontal flip, chosen at random per image and epoch).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info

from hmc.cache import CachedFeatures, cache_key, split_backbone, write_feature_cache
from hmc.data import build_transforms

__all__ = ["FeatureCache"]


class FeatureCache(pl.Callback):
    """Cache the output of the frozen backbone stages (``model.freeze = k``) and train the rest.

    Args:
        folder: where caches live (one sub-folder per fingerprint; reused across runs).
        flip_view: also cache the horizontal flip, read at random per image and epoch.
        batch_size: images per batch of the caching pass.
        num_workers: data-loader workers of the caching pass (default: the data module's).
    """

    def __init__(
        self,
        folder: str = "feature-cache",
        flip_view: bool = False,
        batch_size: int = 64,
        num_workers: int | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.flip_view = flip_view
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.folders: dict[str, Path] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "train_dataset"):
            raise ValueError("FeatureCache needs an hmc.training.HMCDataModule")
        config = pl_module.model.config
        freeze = config.get("freeze")
        if not isinstance(freeze, int) or isinstance(freeze, bool):
            raise ValueError(
                "FeatureCache caches the frozen backbone stages: set `model.freeze` to the last "
                f"frozen stage (0 = stem), got {freeze!r}"
            )
        frozen, rest = split_backbone(pl_module.model.backbone, freeze)
        dm.setup("fit")
        eval_transform = build_transforms(**dm.transform_config(), train=False)
        workers = dm.num_workers if self.num_workers is None else self.num_workers
        for split, flip in (("train", self.flip_view), ("val", False)):
            ds = getattr(dm, f"{split}_dataset")
            if ds is None or isinstance(ds, CachedFeatures):
                continue
            if not hasattr(ds, "paths"):
                raise ValueError(
                    f"FeatureCache needs image files; the {split} dataset "
                    f"{type(ds).__name__} has no `paths`"
                )
            view = copy.copy(ds)
            view.transform = eval_transform
            key = cache_key(
                frozen,
                list(ds.paths),
                eval_transform,
                backbone_name=str(config.get("backbone")),
                freeze=freeze,
                flip_view=flip,
            )
            folder = write_feature_cache(
                self.folder,
                key,
                frozen,
                lambda i, view=view: view[i][0],
                len(ds),
                flip_view=flip,
                batch_size=self.batch_size,
                progress=True,
                loader_kwargs={"num_workers": workers},
            )
            rank_zero_info(f"hmc: {split} features cached in {folder.resolve()}")
            self.folders[split] = folder
            setattr(dm, f"{split}_dataset", CachedFeatures(folder, ds.targets, view))
        # Not a registered submodule: the view shares the model's parameters, and the
        # checkpoint must hold each of them once.
        object.__setattr__(pl_module, "feature_input", rest)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            pl_module.__dict__.pop("feature_input", None)
