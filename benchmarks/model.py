"""Training-step cost of the HRN head against the FlatHead baseline, and parameter counts.

Timing: the same backbone with each head runs full SGD training steps (forward, the head's own
loss, backward, step) on random images, one step of each head in turn so that load on the
shared machine hits both alike. Reported: median wall and process-CPU seconds per step, the
median of the step-by-step ratios to FlatHead, and the ratio that the FLOP counts of one
training step predict (torch.utils.flop_counter.FlopCounterMode; convolutions and matmuls).

Sizes (``--sizes``): parameter counts at the paper's widths (ResNet-50, C = 2048, the cub200-hrn
tree 13/38/200) and forward FLOPs per 448 px image, counted on the meta device (no arithmetic).

    python benchmarks/model.py --backbone resnet18 --image-size 112 --batch-size 16
    python benchmarks/model.py --sizes
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from hmc.hierarchy import load_hierarchy
from hmc.losses import build_loss
from hmc.models import build_model

LIGHT_HRN = dict(mid_channels=64, hidden=256, feature_dim=128)


def make_step(model: torch.nn.Module, loss_fn: torch.nn.Module, lr: float = 0.01):
    optimizer = torch.optim.SGD(model.param_groups(lr, lr / 10), momentum=0.9)

    def step(images: torch.Tensor, targets: torch.Tensor) -> None:
        out = model(images)
        loss = loss_fn(out.node_scores, targets, leaf_logits=out.leaf_logits)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def step_flops(step, images: torch.Tensor, targets: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        step(images, targets)
    return counter.get_total_flops()


def time_heads(args: argparse.Namespace) -> list[dict[str, Any]]:
    h = load_hierarchy(args.hierarchy)
    torch.manual_seed(0)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    targets = h.tensors().leaves[torch.randint(len(h.leaves), (args.batch_size,))]
    runs = {}
    for head in args.heads:
        kwargs = LIGHT_HRN if head == "hrn" and args.hrn_widths == "light" else {}
        model = build_model(h, args.backbone, head, head_kwargs=kwargs).train()
        step = make_step(model, build_loss(h, model.head.default_loss))
        for _ in range(args.warmup):
            step(images, targets)
        runs[head] = dict(model=model, step=step, times=[], flops=step_flops(step, images, targets))
    # Interleave single steps so that load from other processes hits every head alike; compare
    # adjacent steps pairwise. Process CPU time is reported too: with one thread it counts this
    # process's work only and is the steadier measure on a shared machine.
    for _ in range(args.steps):
        for run in runs.values():
            wall, cpu = time.perf_counter(), time.process_time()
            run["step"](images, targets)
            run["times"].append(time.perf_counter() - wall)
            run.setdefault("cpu", []).append(time.process_time() - cpu)
    base = "flat" if "flat" in runs else args.heads[0]
    rows = []
    for head, run in runs.items():
        counts = run["model"].param_counts()
        wall_ratios = [a / b for a, b in zip(run["times"], runs[base]["times"], strict=True)]
        cpu_ratios = [a / b for a, b in zip(run["cpu"], runs[base]["cpu"], strict=True)]
        rows.append(
            dict(
                head=head,
                widths=args.hrn_widths if head == "hrn" else "-",
                wall_s_per_step=statistics.median(run["times"]),
                cpu_s_per_step=statistics.median(run["cpu"]),
                wall_ratio=statistics.median(wall_ratios),
                cpu_ratio=statistics.median(cpu_ratios),
                gflops_per_step=run["flops"] / 1e9,
                flop_ratio=run["flops"] / runs[base]["flops"],
                head_params=counts["head"],
                backbone_params=counts["backbone"],
            )
        )
    return rows


def sizes(args: argparse.Namespace) -> list[dict[str, Any]]:
    h = load_hierarchy(args.sizes_hierarchy)
    rows = []
    for head in ("flat", "leaf", "hrn"):
        model = build_model(h, args.sizes_backbone, head).eval()
        counts = model.param_counts()
        model.to("meta")  # FLOPs from shapes only: no arithmetic
        images = torch.empty(1, 3, args.sizes_image_size, args.sizes_image_size, device="meta")
        with FlopCounterMode(display=False) as counter:
            model(images)
        backbone_flops = _backbone_flops(model, images)
        per_level = (
            [sum(p.numel() for p in branch.parameters()) for branch in model.head.levels]
            if head == "hrn"
            else []
        )
        rows.append(
            dict(
                head=head,
                backbone_params=counts["backbone"],
                head_params=counts["head"],
                head_params_per_level=per_level,
                head_over_backbone=counts["head"] / counts["backbone"],
                gflops_per_image=counter.get_total_flops() / 1e9,
                head_gflops_per_image=(counter.get_total_flops() - backbone_flops) / 1e9,
            )
        )
    return rows


def _backbone_flops(model: torch.nn.Module, images: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        model.backbone.forward_features(images)
    return counter.get_total_flops()


def markdown(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = []
        for k in keys:
            v = row[k]
            cells.append(
                f"{v:,}" if isinstance(v, int) else f"{v:.3g}" if isinstance(v, float) else str(v)
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--hierarchy", default="cub200-hrn", help="shipped name or path")
    p.add_argument("--heads", nargs="+", default=["flat", "hrn"], choices=["flat", "hrn", "leaf"])
    p.add_argument("--hrn-widths", choices=["paper", "light"], default="paper")
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=15, help="timed steps per head (interleaved)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sizes", action="store_true", help="paper-width parameter/FLOP table instead")
    p.add_argument("--sizes-backbone", default="resnet50")
    p.add_argument("--sizes-hierarchy", default="cub200-hrn")
    p.add_argument("--sizes-image-size", type=int, default=448)
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.sizes:
        rows = sizes(args)
        print(
            f"{args.sizes_backbone}, {args.sizes_hierarchy}, {args.sizes_image_size} px, "
            "paper widths, FLOPs = 2 x multiply-adds of one forward pass\n"
        )
    else:
        rows = time_heads(args)
        print(
            f"{args.backbone}, {args.hierarchy}, {args.image_size} px, B={args.batch_size}, "
            f"{args.threads} thread(s), {args.steps} interleaved steps per head, medians; "
            "one training step = forward + loss + backward + SGD\n"
        )
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
