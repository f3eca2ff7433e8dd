"""Benchmark of the combinatorial loss (forward + backward), as ratios within one run.

1. CUB size (hierarchy ``cub200-hrn``, 251 nodes): hmc's ``CombinatorialLoss`` against a
   naive reference written the way the HRN paper's code works (a dense states x nodes matrix,
   ``exp``, then a Python loop over the samples to gather each label's states), and against the
   same level sweeps differentiated by plain autograd instead of the hand-written backward.
2. iNaturalist-2021 size (a seeded random tree with 3/13/51/273/1,103/4,884/10,000 nodes per
   level): the loss against the ``nn.Linear(512, N)`` classifier layer that produces its input,
   both forward + backward on the same batch, and the loss's peak memory for several batch sizes.

Peak memory is measured with torch.profiler's memory timeline (``profile_memory=True``,
``export_memory_timeline(device="cpu")``): the peak, during one forward + backward, of the
bytes held by tensors allocated inside the profiled region (inputs excluded, gradient included).

    python benchmarks/loss.py --threads 1 --json loss.json
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import hmc
from hmc.hierarchy import Hierarchy, HierarchyError
from hmc.losses import CombinatorialLoss
from hmc.sweeps import log_conditionals, state_plan

INAT_LEVELS = (3, 13, 51, 273, 1103, 4884, 10000)


class PaperStyleTreeLoss(nn.Module):
    """The HRN paper's way (reference only): dense [S, N] state matrix, exp, per-sample loop."""

    def __init__(self, h: Hierarchy) -> None:
        super().__init__()
        paths = h.tensors().paths
        states = torch.zeros(h.num_nodes + 1, h.num_nodes)  # row 0: the empty state
        for v in range(h.num_nodes):
            states[1 + v, paths[v][paths[v] >= 0]] = 1.0
        self.register_buffer("states", states)

    def forward(self, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        joint = torch.exp(self.states @ torch.sigmoid(scores).T)  # [S, B]
        z = joint.sum(0)
        loss = torch.zeros(scores.shape[0])
        for i in range(len(targets)):
            rows = torch.where(self.states[:, targets[i]] > 0)[0]
            loss[i] = -torch.log(joint[rows, i].sum() / z[i])
        return loss.mean()


def autograd_loss(h: Hierarchy, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The same level sweeps as CombinatorialLoss, differentiated by autograd."""
    plan = state_plan(h, scores.device)
    log_q = log_conditionals(plan, torch.sigmoid(scores).t().contiguous())  # [N, B]
    path = plan.paths[targets]
    cols = torch.arange(len(targets))[:, None]
    vals = log_q[path.clamp_min(0), cols]
    return -torch.where(path >= 0, vals, torch.zeros_like(vals)).sum(1).mean()


def random_tree(level_sizes: tuple[int, ...], seed: int) -> Hierarchy:
    """Every node of a level gets at least one child in the next level (all leaves at the last
    level, as in iNaturalist); the other children pick a parent uniformly at random."""
    gen = torch.Generator().manual_seed(seed)
    edges = [("root", f"1:{i}") for i in range(level_sizes[0])]
    for d in range(1, len(level_sizes)):
        n_par, n = level_sizes[d - 1], level_sizes[d]
        extra = torch.randint(0, n_par, (n - n_par,), generator=gen)
        parents = torch.cat([torch.arange(n_par), extra]).tolist()
        edges += [(f"{d}:{p}", f"{d + 1}:{i}") for i, p in enumerate(parents)]
    names = [f"level{d}" for d in range(1, len(level_sizes) + 1)]
    return Hierarchy.from_edges(edges, level_names=names)


def time_interleaved(fns: dict[str, Callable[[], None]], repeats: int, warmup: int):
    """Median seconds per call. The methods are interleaved in a shuffled order each round, so
    that machine load hits them alike, and the garbage collector runs between calls only (the
    naive loop's garbage would otherwise be collected during whatever runs next)."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    rng = random.Random(0)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            rng.shuffle(order)
            for k in order:
                gc.collect(0)
                t0 = time.perf_counter()
                fns[k]()
                times[k].append(time.perf_counter() - t0)
    finally:
        if gc_was_enabled:
            gc.enable()
    return {k: statistics.median(v) for k, v in times.items()}


def peak_bytes(fn: Callable[[], None]) -> int:
    """Peak CPU bytes of the tensors allocated during ``fn`` (torch.profiler memory timeline)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "timeline.json"
        prof.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())
    return int(max((sum(s) for s in sizes), default=0))


def fwd_bwd(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x, t):
    def step() -> None:
        x.grad = None
        loss_fn(x, t).backward()

    return step


def memory_row(h: Hierarchy, b: int, seed: int, naive: nn.Module | None = None) -> dict:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, h.num_nodes, generator=gen).requires_grad_()
    t = torch.randint(0, h.num_nodes, (b,), generator=gen)
    unit = b * h.num_nodes * 4
    row = {"tree": f"{h.num_nodes} nodes", "B": b, "BxN_float32_MB": unit / 2**20}
    impls = {
        "hmc": CombinatorialLoss(h),
        "autograd": lambda s, y: autograd_loss(h, s, y),
        "naive": naive,
    }
    for name, fn in impls.items():
        peak = peak_bytes(fwd_bwd(fn, x, t)) if fn is not None else float("nan")
        row[f"{name}_peak_MB"] = peak / 2**20
        row[f"{name}_peak_over_BxN"] = peak / unit
    return row


def bench_cub(args, rows: list[dict], mem_rows: list[dict]) -> Hierarchy:
    try:
        h = hmc.load_hierarchy("cub200-hrn")
        name = "cub200-hrn"
    except HierarchyError:
        h, name = random_tree((13, 38, 200), args.seed), "random 13/38/200"
    ours = CombinatorialLoss(h)
    naive = PaperStyleTreeLoss(h)
    gen = torch.Generator().manual_seed(args.seed)
    for b in args.cub_batch:
        x = torch.randn(b, h.num_nodes, generator=gen).requires_grad_()
        t = torch.randint(0, h.num_nodes, (b,), generator=gen)
        with torch.no_grad():
            diff = abs(float(ours(x, t)) - float(naive(x, t)))
        sec = time_interleaved(
            {
                "naive": fwd_bwd(naive, x, t),
                "hmc": fwd_bwd(ours, x, t),
                "autograd": fwd_bwd(lambda s, y: autograd_loss(h, s, y), x, t),
            },
            args.repeats,
            args.warmup,
        )
        rows.append(
            {
                "case": f"{name} ({h.num_nodes} nodes), B={b}",
                "naive_ms": sec["naive"] * 1e3,
                "hmc_ms": sec["hmc"] * 1e3,
                "autograd_ms": sec["autograd"] * 1e3,
                "speedup_vs_naive": sec["naive"] / sec["hmc"],
                "speedup_vs_autograd": sec["autograd"] / sec["hmc"],
                "abs_diff_vs_naive": diff,
            }
        )
        mem_rows.append(memory_row(h, b, args.seed, naive))
    return h


def bench_inat(args, rows: list[dict], mem_rows: list[dict]) -> Hierarchy:
    h = random_tree(INAT_LEVELS, args.seed)
    n = h.num_nodes
    ours = CombinatorialLoss(h)
    gen = torch.Generator().manual_seed(args.seed)
    b = args.inat_batch
    layer = nn.Linear(512, n)
    feats = torch.randn(b, 512, generator=gen)
    x = torch.randn(b, n, generator=gen).requires_grad_()
    t = torch.randint(0, n, (b,), generator=gen)
    grad_out = torch.randn(b, n, generator=gen)

    def linear_step() -> None:
        layer.zero_grad(set_to_none=True)
        layer(feats).backward(grad_out)

    def both_step() -> None:
        layer.zero_grad(set_to_none=True)
        ours(layer(feats), t).backward()

    sec = time_interleaved(
        {
            "linear": linear_step,
            "hmc": fwd_bwd(ours, x, t),
            "autograd": fwd_bwd(lambda s, y: autograd_loss(h, s, y), x, t),
            "linear+hmc": both_step,
        },
        max(3, args.repeats // 4),
        1,
    )
    rows.append(
        {
            "case": f"iNat-2021 size ({n} nodes, 7 levels), B={b}",
            "linear_ms": sec["linear"] * 1e3,
            "hmc_ms": sec["hmc"] * 1e3,
            "autograd_ms": sec["autograd"] * 1e3,
            "linear_plus_hmc_ms": sec["linear+hmc"] * 1e3,
            "hmc_over_linear": sec["hmc"] / sec["linear"],
            "speedup_vs_autograd": sec["autograd"] / sec["hmc"],
        }
    )
    for mb in args.mem_batch:
        mem_rows.append(memory_row(h, mb, args.seed))
    return h


def markdown(rows: list[dict], cols: list[tuple[str, str, str]]) -> str:
    lines = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(format(r[c[0]], c[2]) for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: less noise)")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cub-batch", type=int, nargs="+", default=[64, 256])
    p.add_argument("--inat-batch", type=int, default=256)
    p.add_argument("--mem-batch", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    cub_rows: list[dict] = []
    inat_rows: list[dict] = []
    mem_rows: list[dict] = []
    bench_cub(args, cub_rows, mem_rows)
    inat = bench_inat(args, inat_rows, mem_rows)

    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats} runs\n")
    print(
        markdown(
            cub_rows,
            [
                ("case", "forward + backward", "s"),
                ("naive_ms", "paper-style naive (ms)", ".2f"),
                ("autograd_ms", "sweeps + autograd (ms)", ".2f"),
                ("hmc_ms", "hmc (ms)", ".2f"),
                ("speedup_vs_naive", "hmc speed-up vs naive", ".1f"),
                ("speedup_vs_autograd", "vs autograd", ".1f"),
                ("abs_diff_vs_naive", "|loss - naive|", ".1e"),
            ],
        )
    )
    print()
    print(
        markdown(
            inat_rows,
            [
                ("case", "forward + backward", "s"),
                ("linear_ms", "nn.Linear(512, N) (ms)", ".1f"),
                ("autograd_ms", "sweeps + autograd (ms)", ".1f"),
                ("hmc_ms", "hmc loss (ms)", ".1f"),
                ("hmc_over_linear", "loss / linear", ".2f"),
                ("linear_plus_hmc_ms", "linear + loss (ms)", ".1f"),
            ],
        )
    )
    print()
    print(
        markdown(
            mem_rows,
            [
                ("tree", "tree", "s"),
                ("B", "B", "d"),
                ("BxN_float32_MB", "one [B, N] float32 (MB)", ".2f"),
                ("hmc_peak_MB", "hmc peak (MB)", ".2f"),
                ("hmc_peak_over_BxN", "hmc peak / [B, N]", ".2f"),
                ("autograd_peak_over_BxN", "autograd peak / [B, N]", ".2f"),
                ("naive_peak_over_BxN", "naive peak / [B, N]", ".1f"),
            ],
        )
    )
    dense = (inat.num_nodes + 1) * inat.num_nodes * 4 / 2**30
    print(
        f"\nThe naive reference's dense states x nodes matrix alone would take {dense:.2f} GiB "
        f"(float32) at iNat-2021 size ({inat.num_nodes} nodes)."
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"threads": args.threads, "cub": cub_rows, "inat": inat_rows, "memory": mem_rows},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
