"""Loader throughput (images/s) of hmc.data on CUB-style JPEGs, per transform preset and
number of DataLoader workers, read through the generic CSV loader.

    python benchmarks/data.py --root ../shared/data/cub-crops-77 [--num-images 768] [--json f]

``--root`` is a folder with ``labels.csv`` (columns ``path`` and ``cub_class_dir``) and
``images/``, as ``shared/data/cub-crops-77`` has. Every configuration reads the same images
in the same order; the first batch (worker start-up, first decode) is not timed. Ratios are
against decoding alone (PIL open + RGB, no transform, 0 workers) measured in the same run,
so they stay meaningful on a busy machine where absolute figures do not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import hmc.data as D
from hmc.data.transforms import decode_size


def _to_tensor_only(image):
    """Decode-only baseline: a PIL image to a uint8 tensor, nothing else."""
    import numpy as np

    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


def _torchvision_normalize():
    """The plain torchvision equivalent of the presets' last step (mean = std = 0.5)."""
    from torchvision.transforms import v2

    half = (0.5, 0.5, 0.5)
    return v2.Compose(
        [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(half, half),
         v2.ToPureTensor()]
    )  # fmt: skip


def _collate_list(batch):
    return batch  # images differ in size in the decode-only baseline


def measure(ds, workers: int, batch_size: int) -> float:
    """Images/s of one pass, timed from the first batch (start-up excluded) to the last."""
    decode_only = ds.transform is _to_tensor_only
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        num_workers=workers,
        shuffle=False,
        collate_fn=_collate_list if decode_only else None,
    )
    it = iter(loader)
    next(it)
    start, n = time.perf_counter(), 0
    for batch in it:
        n += len(batch) if decode_only else len(batch[1])  # (images, targets) otherwise
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--root", required=True, help="folder with labels.csv and images/")
    p.add_argument("--label-column", default="cub_class_dir")
    p.add_argument("--hierarchy", default="cub200")
    p.add_argument("--num-images", type=int, default=768, help="images per pass (first n rows)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--presets",
        nargs="+",
        default=["paper", "small", "small+draft"],
        help="'+draft': decode JPEGs at a reduced DCT scale, as HMCDataModule does; "
        "'+tv': normalise with torchvision's ToImage/ToDtype/Normalize/ToPureTensor instead "
        "of the fused ToNormalizedTensor",
    )
    p.add_argument("--small-size", type=int, default=64, help="image_size of the small preset")
    p.add_argument("--repeats", type=int, default=3, help="passes per setting; the best counts")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    p.add_argument(
        "--fashion-root",
        type=Path,
        help="also time Fashion-MNIST (in memory, small preset at 32 px; raw files are taken "
        "from the Debian package dataset-fashion-mnist into this folder if absent)",
    )
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    # DataLoader workers run with 1 thread each; the main process does the same by default,
    # since intra-op threads on small per-image tensors only add overhead (and oversubscribe
    # a shared machine).
    torch.set_num_threads(args.threads)

    root = Path(args.root).expanduser()
    full = D.CSVDataset(
        args.hierarchy, root / "labels.csv", root=root / "images", label_column=args.label_column
    )
    ds = full.subset(torch.arange(min(args.num_images, len(full))))
    print(f"{full!r}\nusing the first {len(ds)} images, batch {args.batch_size}", file=sys.stderr)

    configs = [("decode only", None, 0)]
    for preset in args.presets:
        configs += [(preset, preset, w) for w in args.workers]
    fashion = None
    if args.fashion_root is not None:
        tf = D.build_transforms("small", train=True, image_size=32)
        D.FashionMNIST.prepare(args.fashion_root)
        fashion = D.FashionMNIST(args.fashion_root, "trainval", transform=tf)
        fashion = fashion.subset(torch.arange(min(8 * args.num_images, len(fashion))))
        configs += [("fashion-mnist", "fashion", w) for w in args.workers]
    best: dict[tuple[str, int], float] = {}
    # Round-robin over the settings, best pass of each: on a shared machine the load drifts,
    # and interleaving exposes every setting to the same drift.
    for r in range(args.repeats):
        for label, preset, w in configs:
            data = fashion if preset == "fashion" else ds
            if preset is None:
                ds.transform, ds.decode_size = _to_tensor_only, None
            elif preset != "fashion":
                name, *options = preset.split("+")
                size = args.small_size if name == "small" else None
                ds.transform = D.build_transforms(name, train=True, image_size=size)
                if "tv" in options:
                    ds.transform.transforms[-1] = _torchvision_normalize()
                ds.decode_size = decode_size(name, size) if "draft" in options else None
            rate = measure(data, w, args.batch_size)
            best[label, w] = max(rate, best.get((label, w), 0.0))
            print(f"  pass {r + 1}: {label} workers={w}: {rate:.0f} images/s", file=sys.stderr)
    rows = [{"preset": k[0], "workers": k[1], "images_per_s": v} for k, v in best.items()]
    baseline = best["decode only", 0]

    zero = {r["preset"]: r["images_per_s"] for r in rows if r["workers"] == 0}
    print("| preset (train transform) | workers | images/s | vs decode only | vs 0 workers |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        label = r["preset"].replace("small", f"small ({args.small_size} px)")
        label = label.replace("paper", "paper (550 px, crop 448)")
        label = label.replace("+draft", ", JPEG draft decode")
        label = label.replace("+tv", ", torchvision normalise")
        label = label.replace("fashion-mnist", "Fashion-MNIST in memory, small (32 px)")
        rate = r["images_per_s"]
        vs_decode = "-" if r["preset"] == "fashion-mnist" else f"{rate / baseline:.2f}"
        print(
            f"| {label} | {r['workers']} | {rate:.0f} | {vs_decode} | "
            f"{rate / zero[r['preset']]:.2f} |"
        )
    env = {
        "cpus": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if args.json:
        args.json.write_text(
            json.dumps({"rows": rows, "env": env, "args": vars(args)}, default=str, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
