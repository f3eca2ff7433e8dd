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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--sizes", default="20,200,2000,10800", help="nodes per level")
    ap.add_argument("--chunk", type=int, default=1000, help="rows per update in the chunked run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    h = build_tree([int(s) for s in args.sizes.split(",")], args.seed)
    probs, targets, pred = make_data(h, args.samples, args.seed)
    leaf_sl = h.level_slice(h.num_levels)

    def run_update(groups=None, chunk=None, with_probs=True):
        m = HierarchicalMetrics(h, metrics=groups)
        step = chunk or args.samples

        def go():
            m.reset()
            for i in range(0, args.samples, step):
                m.update(
                    probs[i : i + step] if with_probs else None,
                    targets[i : i + step],
                    pred[i : i + step],
                )

        return go, m

    rows: list[tuple[str, float]] = []
    base = best_of(lambda: torch.aminmax(probs), args.repeats)
    rows.append(("baseline: one read of node_probs (torch.aminmax)", base))
    flat = MulticlassAccuracy(num_classes=leaf_sl.stop - leaf_sl.start, top_k=5)
    leaf_t = (targets - leaf_sl.start).clamp(0, leaf_sl.stop - leaf_sl.start - 1)
    rows.append(
        (
            "baseline: torchmetrics MulticlassAccuracy(top_k=5), leaf slice only",
            best_of(lambda: (flat.reset(), flat.update(probs[:, leaf_sl], leaf_t)), args.repeats),
        )
    )
    full, m = run_update()
    rows.append(("HierarchicalMetrics.update, all metrics, one call", best_of(full, args.repeats)))
    flat_probs = probs
    probs = make_data(h, args.samples, args.seed, peaked=True)[0]
    rows.append(
        ("same, peaked probabilities (a confident model)", best_of(run_update()[0], args.repeats))
    )
    probs = flat_probs
    chunked, _ = run_update(chunk=args.chunk)
    rows.append(
        (
            f"HierarchicalMetrics.update, all metrics, chunks of {args.chunk}",
            best_of(chunked, args.repeats),
        )
    )
    pred_groups = [g for g in METRIC_GROUPS if g not in PROBABILITY_GROUPS]
    no_probs, _ = run_update(pred_groups, with_probs=False)
    rows.append(
        (f"update without node_probs ({', '.join(pred_groups)})", best_of(no_probs, args.repeats))
    )
    for g in PROBABILITY_GROUPS:
        go, _ = run_update([g])
        rows.append(
            (f"update, '{g}' alone (incl. validating node_probs)", best_of(go, args.repeats))
        )
    full()
    rows.append(
        ("compute() + confusions()", best_of(lambda: (m.compute(), m.confusions()), args.repeats))
    )

    # A training loop's validation step: small batches on a CUB-size tree (Python overhead).
    cub = load_hierarchy("cub200-hrn")
    g = torch.Generator().manual_seed(args.seed)
    small = torch.rand(64, cub.num_nodes, generator=g)
    small_t = torch.randint(0, cub.num_nodes, (64,), generator=g)
    small_p = cub.paths[torch.randint(0, cub.num_nodes, (64,), generator=g)]
    step_m = HierarchicalMetrics(cub)
    step = best_of(
        lambda: [step_m.update(small, small_t, small_p) for _ in range(20)], args.repeats
    )
    rows.append(
        ("update, 64 predictions on cub200-hrn (251 nodes): one validation step", step / 20)
    )

    print(
        f"\n{args.samples} predictions, tree {h.level_sizes()} ({h.num_nodes} nodes), node_probs "
        f"{probs.numel() * 4 / 1e6:.0f} MB float32, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}\n"
    )
    print("| what | seconds | x one read of node_probs |")
    print("| --- | ---: | ---: |")
    for name, t in rows:
        print(f"| {name} | {t:.3f} | {t / base:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "command": " ".join(sys.argv),
                    "samples": args.samples,
                    "level_sizes": h.level_sizes(),
                    "threads": torch.get_num_threads(),
                    "seconds": dict(rows),
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
