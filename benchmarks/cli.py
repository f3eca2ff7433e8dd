"""Start-up time of the ``hmc`` command (issue 14): wall seconds, median of several runs, each
a fresh process, with the load average of the machine stated (times on a shared machine
depend on it).

Targets (2-core machine): ``hmc --help`` <= 2 s, ``hmc hierarchy validate`` on a 3-line file
<= 2.5 s, ``import hmc`` <= ``import torch`` + 0.5 s.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cli.py [--runs 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

THREE_LINES = "order,species\nAlbatrosses,Black-footed Albatross\nGulls,Herring Gull\n"


def hmc_command() -> list[str]:
    """The installed ``hmc`` script next to this Python, else ``python -m hmc.cli``."""
    script = Path(sys.executable).with_name("hmc")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "hmc.cli"]


def seconds(cmd: list[str], runs: int) -> dict[str, float | list[float]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return {"median_s": round(statistics.median(times), 3), "runs_s": [round(t, 3) for t in times]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    hmc = hmc_command()
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "three.csv"
        tree.write_text(THREE_LINES)
        cases = {
            "hmc --help": [*hmc, "--help"],
            "hmc --version": [*hmc, "--version"],
            "hmc fit --help": [*hmc, "fit", "--help"],
            "hmc hierarchy validate (3 lines)": [*hmc, "hierarchy", "validate", str(tree)],
            "import torch": [sys.executable, "-c", "import torch"],
            "import hmc": [sys.executable, "-c", "import hmc"],
            "import hmc.hierarchy": [sys.executable, "-c", "import hmc.hierarchy"],
            "python -c pass": [sys.executable, "-c", "pass"],
        }
        load_before = os.getloadavg()
        results = {name: seconds(cmd, args.runs) for name, cmd in cases.items()}
        load_after = os.getloadavg()
    med = {k: v["median_s"] for k, v in results.items()}
    targets = {
        "hmc --help <= 2 s": med["hmc --help"] <= 2.0,
        "hmc hierarchy validate <= 2.5 s": med["hmc hierarchy validate (3 lines)"] <= 2.5,
        "import hmc <= import torch + 0.5 s": med["import hmc"] <= med["import torch"] + 0.5,
    }
    print(f"load average (1/5/15 min): before {load_before}, after {load_after}; "
          f"{os.cpu_count()} CPUs; median of {args.runs} runs")  # fmt: skip
    for name, value in med.items():
        print(f"  {name:<36} {value:7.2f} s")
    for name, ok in targets.items():
        print(f"  target {name}: {'met' if ok else 'NOT met'}")
    if args.json:
        out = {"load_before": load_before, "load_after": load_after, "runs": args.runs,
               "results": results, "targets": targets}  # fmt: skip
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
