"""Training throughput of HMCModule under pl.Trainer against a bare PyTorch loop.

Both loops train the same model (hmc.models.build_model) with the same loss (HRN), the same
SGD parameter groups (head/backbone learning rates) and the same per-epoch cosine schedule on
the same in-memory batches (DataLoader, num_workers 0). The Lightning side runs as the
configs do: the per-stage metrics objects, train-loss logging (CSV logger, or W&B offline),
lr logging, configs/base.yaml's ModelCheckpoint (last.ckpt at every epoch end) and optionally
the rich progress bar. Validation is off in both (it is not part of a training step's cost).

Runs alternate (bare, lightning, bare, ...) to spread machine noise; the first epoch of every
run is a warm-up and is not timed. Reported: images/s per run (median) and the overhead
ratio bare/lightning - 1 (the target is <= 10%).

    python benchmarks/overhead.py                     # demo-sized: resnet10t, 32 px, batch 64
    python benchmarks/overhead.py --backbone resnet18 --image-size 64 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

BASE = Path(__file__).resolve().parents[1] / "configs" / "base.yaml"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def make_data(h, n: int, size: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=g)
    targets = torch.randint(0, h.num_nodes, (n,), generator=g)
    return TensorDataset(images, targets)


def loader(ds: TensorDataset, batch_size: int) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=0)


def module_kwargs(args) -> dict:
    return dict(
        backbone=args.backbone,
        head=args.head,
        head_kwargs=json.loads(args.head_kwargs),
        lr=0.01,
        backbone_lr=0.001,
    )


def bare_run(args, h, ds) -> float:
    """Images/s of the plain loop over the timed epochs."""
    from hmc.training import HMCModule

    torch.manual_seed(args.seed)
    m = HMCModule(h, **module_kwargs(args))  # the same model, loss and groups; no Trainer
    model, loss_fn = m.model.train(), m.loss_fn
    opt = torch.optim.SGD(
        model.param_groups(head_lr=0.01, backbone_lr=0.001), momentum=0.9, weight_decay=5e-4
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)  # as HMCModule
    dl = loader(ds, args.batch_size)
    seen, start = 0, None
    for epoch in range(args.epochs):
        if epoch == 1:
            start = time.perf_counter()
        for images, targets in dl:
            out = model(images)
            loss = loss_fn(out.node_scores, targets, leaf_logits=out.leaf_logits)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if epoch >= 1:
                seen += images.shape[0]
        sched.step()
    return seen / (time.perf_counter() - start)


def lightning_run(args, h, ds, root: str) -> float:
    import pytorch_lightning as pl
    import yaml
    from pytorch_lightning.callbacks import ModelCheckpoint

    from hmc.training.module import HMCModule

    class Clock(pl.Callback):
        def __init__(self) -> None:
            self.start = None
            self.seen = 0

        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.current_epoch >= 1:
                self.seen += batch[0].shape[0]

        def on_train_end(self, trainer, pl_module):
            self.elapsed = time.perf_counter() - self.start

    torch.manual_seed(args.seed)
    m = HMCModule(h, **module_kwargs(args))
    clock = Clock()
    callbacks = [
        ModelCheckpoint(
            dirpath=os.path.join(root, "checkpoints"),
            **yaml.safe_load(BASE.read_text())["checkpoint"],
        ),
        clock,
    ]
    if args.progress == "rich":
        from pytorch_lightning.callbacks import RichProgressBar

        callbacks.append(RichProgressBar())
    if args.logger == "wandb":
        from hmc.training import WandbLogger

        logger = WandbLogger(save_dir=root, project="hmc-overhead", offline=True)
    elif args.logger == "csv":
        from pytorch_lightning.loggers import CSVLogger

        logger = CSVLogger(root)
    else:
        logger = False
    trainer = pl.Trainer(
        default_root_dir=root,
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=callbacks,
        log_every_n_steps=args.log_every,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_progress_bar=args.progress == "rich",
        enable_model_summary=False,
    )
    trainer.fit(m, loader(ds, args.batch_size))
    return clock.seen / clock.elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backbone", default="resnet10t")
    p.add_argument("--head", default="hrn")
    p.add_argument(
        "--head-kwargs",
        default='{"mid_channels": 64, "block_channels": 128, "hidden": 128, "feature_dim": 64}',
        help="JSON (default: the demo config's light HRN head)",
    )
    p.add_argument("--hierarchy", default="fashion-mnist")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=30, help="batches per epoch")
    p.add_argument("--epochs", type=int, default=3, help="the first one is a warm-up")
    p.add_argument("--repeats", type=int, default=3, help="alternating runs of each loop")
    p.add_argument("--logger", choices=["csv", "wandb", "none"], default="csv")
    p.add_argument("--progress", choices=["rich", "none"], default="none")
    p.add_argument("--log-every", type=int, default=10, help="log_every_n_steps (demo: 10)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()

    import logging

    from hmc.hierarchy import load_hierarchy

    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    h = load_hierarchy(args.hierarchy)
    ds = make_data(h, args.steps * args.batch_size, args.image_size, args.seed)
    bare, lit = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            bare.append(bare_run(args, h, ds))
            lit.append(lightning_run(args, h, ds, os.path.join(tmp, f"run{r}")))
    b, lt = statistics.median(bare), statistics.median(lit)
    overhead = b / lt - 1.0
    setup = (
        f"{args.backbone} + {args.head} head, {args.image_size} px, batch {args.batch_size}, "
        f"{args.steps} steps x {args.epochs - 1} timed epochs, {args.repeats} runs each, "
        f"{torch.get_num_threads()} threads, logger={args.logger}, progress={args.progress}"
    )
    print(f"\n{setup}\n")
    print("| loop | images/s (median) | runs | ratio to bare |")
    print("| --- | ---: | --- | ---: |")
    print(f"| bare PyTorch | {b:.1f} | {', '.join(f'{x:.1f}' for x in bare)} | 1.000 |")
    runs = ", ".join(f"{x:.1f}" for x in lit)
    print(f"| HMCModule + pl.Trainer | {lt:.1f} | {runs} | {lt / b:.3f} |")
    print(f"\nLightning overhead: {100 * overhead:+.1f}% time per image (target <= 10%)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"setup": setup, "args": vars(args), "bare_images_per_s": bare,
                 "lightning_images_per_s": lit, "overhead": overhead},
                f, indent=1,
            )  # fmt: skip


if __name__ == "__main__":
    main()
