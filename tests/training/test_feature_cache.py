"""hmc.training.FeatureCache: hmc fit from cached frozen-stage features, end to end on a tiny
CUB-layout dataset."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import wandb
from data_fixtures import BIRD_CLASSES, bird_hierarchy, make_cub

from hmc.cache import CachedFeatures
from hmc.predict import load_model
from hmc.training import (
    FeatureCache,
    HMCDataModule,
    HMCModule,
    LogPredictionSamples,
    WandbLogger,
)


def _fit(tmp_path, cache: FeatureCache | None, seed: int = 0, callbacks=(), logger=False):
    pl.seed_everything(seed, workers=True)
    h = bird_hierarchy()
    dm = HMCDataModule(
        "cub200", root=str(tmp_path / "data"), hierarchy=h, batch_size=8, num_workers=0,
        image_size=32, preset="small", val_fraction=0.25,
    )  # fmt: skip
    model = HMCModule(
        h, backbone="resnet10t", head="flat", freeze=1, lr=0.05, backbone_lr=0.05,
        scheduler="constant",
    )  # fmt: skip
    trainer = pl.Trainer(
        default_root_dir=tmp_path / "run", max_epochs=2, accelerator="cpu", logger=logger,
        enable_progress_bar=False, enable_model_summary=False, deterministic=True,
        callbacks=([cache] if cache else []) + list(callbacks), enable_checkpointing=True,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    return trainer, model, dm


@pytest.fixture(scope="module")
def cub(tmp_path_factory):
    root = tmp_path_factory.mktemp("cub")
    make_cub(root / "data", BIRD_CLASSES[:4], train_per_class=6, test_per_class=2)
    return root


def test_fit_from_the_cache_trains_the_later_stages_and_saves_the_whole_model(cub, tmp_path):
    (tmp_path / "data").symlink_to(cub / "data")
    cache = FeatureCache(folder=str(tmp_path / "cache"))
    trainer, model, dm = _fit(tmp_path, cache)
    assert isinstance(dm.train_dataset, CachedFeatures) and isinstance(
        dm.val_dataset, CachedFeatures
    )
    assert {p.parent for p in cache.folders.values()} == {tmp_path / "cache"}
    assert "feature_input" not in model.__dict__  # removed after fit
    keys = model.state_dict().keys()
    assert not any("feature_input" in k for k in keys)  # each parameter saved once
    # The checkpoint predicts with no cache present, like the live model.
    ckpt = (
        trainer.checkpoint_callback.best_model_path or trainer.checkpoint_callback.last_model_path
    )
    predictor = load_model(ckpt)
    images = torch.randn(3, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        live = model.model(images).node_scores
        loaded = predictor.model(images).node_scores
    assert torch.allclose(live, loaded, atol=1e-6)


def test_a_second_run_with_the_same_inputs_reuses_the_cache(cub, tmp_path):
    (tmp_path / "data").symlink_to(cub / "data")
    first = FeatureCache(folder=str(tmp_path / "cache"))
    _fit(tmp_path, first)
    stamp = {k: (f / "features.npy").stat().st_mtime_ns for k, f in first.folders.items()}
    second = FeatureCache(folder=str(tmp_path / "cache"))
    _fit(tmp_path, second)
    assert second.folders == first.folders  # the same key: reused, not rewritten
    assert {k: (f / "features.npy").stat().st_mtime_ns for k, f in second.folders.items()} == stamp


def test_feature_cache_needs_a_stage_index(cub, tmp_path):
    (tmp_path / "data").symlink_to(cub / "data")
    h = bird_hierarchy()
    dm = HMCDataModule(
        "cub200",
        root=str(tmp_path / "data"),
        hierarchy=h,
        num_workers=0,
        image_size=32,
        preset="small",
    )
    model = HMCModule(h, backbone="resnet10t", head="flat")
    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        callbacks=[FeatureCache(folder=str(tmp_path / "c"))],
    )
    with pytest.raises(ValueError, match="set `model.freeze` to the last frozen stage"):
        trainer.fit(model, datamodule=dm)


def test_prediction_samples_show_the_images_behind_cached_features(cub, tmp_path, wandb_home):
    # base.yaml's LogPredictionSamples once fed cached [C, 7, 7] features to the whole model.
    (tmp_path / "data").symlink_to(cub / "data")
    samples = LogPredictionSamples(num_samples=4)
    logger = WandbLogger(project="hmc-test", save_dir=str(wandb_home))
    _fit(tmp_path, FeatureCache(folder=str(tmp_path / "cache")), callbacks=[samples], logger=logger)
    wandb.finish()
    images, targets = samples.batch
    assert images.shape == (4, 3, 32, 32) and targets.shape == (4,)
