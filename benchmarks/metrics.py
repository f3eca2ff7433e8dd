"""Update cost of hmc.metrics on a big tree, as ratios within one run.

A seeded tree with 20 / 200 / 2,000 / 10,800 nodes per level (13,020 nodes) and 10,000
predictions: node_probs is a dense float32 [10000, 13020] matrix (521 MB) of per-level
softmaxes (flat random ones, and peaked ones for the full update), targets are random
leaves (10 % coarse labels, 2 % unlabelled), predictions are
consistent paths (``Decoded.nodes`` style, 10 % early stops). Timed: ``update`` of the full
``HierarchicalMetrics`` in one call and in chunks, of each metric group alone, of the
prediction-only groups (no node_probs), ``compute`` + ``confusions``, and one small update
(64 predictions on ``cub200-hrn``: a validation step's Python overhead). Baselines in the
same run: one read of node_probs (``torch.aminmax``, the memory-bandwidth floor) and
torchmetrics' ``MulticlassAccuracy(top_k=5)`` on the leaf level's slice alone (one flat metric).
Each figure is the best of ``--repeats`` runs (the machine may be shared).

    python benchmarks/metrics.py --threads 2 --json metrics.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch
from torchmetrics.classification import MulticlassAccuracy

from hmc.hierarchy import Hierarchy, load_hierarchy
from hmc.metrics import METRIC_GROUPS, PROBABILITY_GROUPS, HierarchicalMetrics


def build_tree(sizes: list[int], seed: int) -> Hierarchy:
    """Random tree with ``sizes[d]`` nodes at level d + 1, every parent at least one child."""
    g = torch.Generator().manual_seed(seed)
    edges: list[tuple[str, str]] = [("root", f"L1_{i}") for i in range(sizes[0])]
    for d in range(1, len(sizes)):
        parents, n = sizes[d - 1], sizes[d]
        # Each parent gets one child, the rest go to random parents.
        owner = torch.cat(
            [torch.arange(parents), torch.randint(0, parents, (n - parents,), generator=g)]
        )
        edges += [(f"L{d}_{int(p)}", f"L{d + 1}_{i}") for i, p in enumerate(owner.sort().values)]
    return Hierarchy.from_edges(edges, level_names=[f"level{d + 1}" for d in range(len(sizes))])


def make_data(h: Hierarchy, samples: int, seed: int, peaked: bool = False):
    """Flat: softmax of 3 x N(0, 1) logits per level (many scores above 1 / 200: the slow case
    of the average precision). Peaked: + 12 on the label's ancestor, like a trained model."""
    g = torch.Generator().manual_seed(seed)
    leaves = h.tensors().leaves
    targets = leaves[torch.randint(0, len(leaves), (samples,), generator=g)]
    coarse = torch.rand(samples, generator=g) < 0.1
    targets = torch.where(coarse, h.tensors().parent[targets], targets)
    targets[torch.rand(samples, generator=g) < 0.02] = -100
    probs = torch.empty(samples, h.num_nodes)
    for d in range(1, h.num_levels + 1):
        sl = h.level_slice(d)
        logits = torch.randn(samples, sl.stop - sl.start, generator=g) * 3
        if peaked:
            col = h.level_targets(targets)[:, d - 1]
            rows = (col >= 0).nonzero().squeeze(1)
            logits[rows, col[rows] - sl.start] += 12
        probs[:, sl] = logits.softmax(1)
    pred = h.tensors().paths[leaves[torch.randint(0, len(leaves), (samples,), generator=g)]]
    pred[torch.rand(samples, generator=g) < 0.1, -1] = -1
    return probs, targets, pred


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--sizes", default="20,200,2000,10800", help="nodes per level")
    ap.add_argument("--chunk", type=int, default=1000, help="rows per update in the chunked run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the results here")
    return ap.parse_args()


def updater(h, probs, targets, pred, groups=None, chunk=None):
    """A fresh HierarchicalMetrics and a function that resets it and feeds it all rows
    (``probs=None``: the prediction-only groups)."""
    m = HierarchicalMetrics(h, metrics=groups)
    step = chunk or len(targets)

    def go():
        m.reset()
        for i in range(0, len(targets), step):
            rows = slice(i, i + step)
            m.update(None if probs is None else probs[rows], targets[rows], pred[rows])

    return go, m


def big_tree_rows(args, h) -> list[tuple[str, float]]:
    probs, targets, pred = make_data(h, args.samples, args.seed)
    peaked = make_data(h, args.samples, args.seed, peaked=True)[0]
    leaf_sl = h.level_slice(h.num_levels)
    n_leaf = leaf_sl.stop - leaf_sl.start
    flat = MulticlassAccuracy(num_classes=n_leaf, top_k=5)
    leaf_t = (targets - leaf_sl.start).clamp(0, n_leaf - 1)
    full, m = updater(h, probs, targets, pred)
    pred_groups = [g for g in METRIC_GROUPS if g not in PROBABILITY_GROUPS]
    cases = [
        ("baseline: one read of node_probs (torch.aminmax)", lambda: torch.aminmax(probs)),
        (
            "baseline: torchmetrics MulticlassAccuracy(top_k=5), leaf slice only",
            lambda: (flat.reset(), flat.update(probs[:, leaf_sl], leaf_t)),
        ),
        ("HierarchicalMetrics.update, all metrics, one call", full),
        (
            "same, peaked probabilities (a confident model)",
            updater(h, peaked, targets, pred)[0],
        ),
        (
            f"HierarchicalMetrics.update, all metrics, chunks of {args.chunk}",
            updater(h, probs, targets, pred, chunk=args.chunk)[0],
        ),
        (
            f"update without node_probs ({', '.join(pred_groups)})",
            updater(h, None, targets, pred, pred_groups)[0],
        ),
    ]
    cases += [
        (
            f"update, '{g}' alone (incl. validating node_probs)",
            updater(h, probs, targets, pred, [g])[0],
        )
        for g in PROBABILITY_GROUPS
    ]
    rows = [(name, best_of(fn, args.repeats)) for name, fn in cases]
    full()  # compute() needs a filled state
    rows.append(
        ("compute() + confusions()", best_of(lambda: (m.compute(), m.confusions()), args.repeats))
    )
    return rows


def validation_step_row(args) -> tuple[str, float]:
    """A training loop's validation step: small batches on a CUB-size tree (Python overhead)."""
    cub = load_hierarchy("cub200-hrn")
    g = torch.Generator().manual_seed(args.seed)
    probs = torch.rand(64, cub.num_nodes, generator=g)
    targets = torch.randint(0, cub.num_nodes, (64,), generator=g)
    pred = cub.tensors().paths[torch.randint(0, cub.num_nodes, (64,), generator=g)]
    m = HierarchicalMetrics(cub)
    t = best_of(lambda: [m.update(probs, targets, pred) for _ in range(20)], args.repeats)
    return (
        f"update, 64 predictions on cub200-hrn ({cub.num_nodes} nodes): one validation step",
        t / 20,
    )


def report(args, h, rows: list[tuple[str, float]]) -> None:
    base = rows[0][1]
    print(
        f"\n{args.samples} predictions, tree {h.level_sizes()} ({h.num_nodes} nodes), node_probs "
        f"{args.samples * h.num_nodes * 4 / 1e6:.0f} MB float32, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}\n"
    )
    print("| what | seconds | x one read of node_probs |")
    print("| --- | ---: | ---: |")
    for name, t in rows:
        print(f"| {name} | {t:.3f} | {t / base:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            record = {
                "command": " ".join(sys.argv),
                "samples": args.samples,
                "level_sizes": h.level_sizes(),
                "threads": torch.get_num_threads(),
                "seconds": dict(rows),
            }
            json.dump(record, f, indent=2)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    h = build_tree([int(s) for s in args.sizes.split(",")], args.seed)
    rows = big_tree_rows(args, h) + [validation_step_row(args)]
    report(args, h, rows)


if __name__ == "__main__":
    main()
