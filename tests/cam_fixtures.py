"""A tiny real run for the explanation and report tests: a folder tree of synthetic images
(HierarchyFolder layout, ``root/<side>/<colour>/i.png``) where the side of a bright patch is
the level-1 class and its colour the level-2 class, and a few HRN training steps on it with
HMCModule + HMCDataModule, saved as a real checkpoint (hierarchy, model, eval transform)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIDES, COLOURS = ("left", "right"), ("red", "green")
SIZE = 64


def patch_image(side: str, colour: str, rng: np.random.Generator, size: int = SIZE) -> Image.Image:
    """Dark noise with a bright patch on the ``side`` half, in ``colour``."""
    a = (rng.random((size, size, 3)) * 50).astype(np.uint8)
    x0 = size // 16 if side == "left" else size // 2 + size // 16
    channel = COLOURS.index(colour)
    a[size // 4 : 3 * size // 4, x0 : x0 + 3 * size // 8, channel] = 255
    return Image.fromarray(a)


def write_images(root: Path, per_class: int = 6, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for side in SIDES:
        for colour in COLOURS:
            folder = root / side / colour
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                patch_image(side, colour, rng).save(folder / f"{side}_{colour}_{i}.png")
    return root


def fit_checkpoint(tmp: Path, steps: int = 20) -> tuple[Path, Path]:
    """(checkpoint, image root) after ``steps`` training steps on the patch images."""
    import pytorch_lightning as pl

    from hmc.training import HMCDataModule, HMCModule

    root = write_images(tmp / "images")
    dm = HMCDataModule(
        dataset="folder",
        root=str(root),
        batch_size=8,
        num_workers=0,
        image_size=SIZE,
        preset="small",
        val_fraction=0.0,
    )
    module = HMCModule(
        dm.hierarchy,
        backbone="test_efficientnet",
        head_kwargs={"mid_channels": 16, "block_channels": 16, "hidden": 16, "feature_dim": 16},
        optimizer="adamw",
        lr=1e-2,
        backbone_lr=1e-2,
        weight_decay=0.0,
        scheduler="constant",
    )
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        default_root_dir=tmp / "run",
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        enable_checkpointing=False,
    )
    trainer.fit(module, datamodule=dm)
    ckpt = tmp / "run" / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    return ckpt, root
