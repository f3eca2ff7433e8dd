"""Write cub-crops-77 as an ``hmc fit`` CSV dataset: ``train.csv`` and ``test.csv`` (``path,label``
rows from the folder's ``labels.csv``, split by its ``is_test`` column) and ``cub77.json``, the
shipped ``cub200`` tree restricted to the 77 species.

    python benchmarks/cub77_split.py --out /tmp/cub77
    hmc fit --config configs/base.yaml --config configs/cub200_cpu.yaml --data.dataset csv \\
        --data.root /tmp/cub77 --data.hierarchy /tmp/cub77/cub77.json
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from hmc.hierarchy import load_hierarchy

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=REPO.parent / "shared/data/cub-crops-77")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    with open(args.root / "labels.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("train.csv", "test.csv", "cub77.json"):
        if (args.out / name).exists():
            raise SystemExit(f"error: {args.out / name} exists; choose another --out")
    species = sorted({r["cub_class_dir"] for r in rows})
    load_hierarchy("cub200").restrict(species).save(args.out / "cub77.json")
    images = args.root.resolve() / "images"
    for split, flag in (("train", "0"), ("test", "1")):
        with open(args.out / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["path", "label"])
            w.writerows(
                [images / r["path"], r["cub_class_dir"]] for r in rows if r["is_test"] == flag
            )
    print(f"{args.out}: {len(species)} species, {len(rows)} images")


if __name__ == "__main__":
    main()
