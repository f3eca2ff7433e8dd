"""Two CPU processes (gloo), each fed part of the data, compute exactly the metrics of one
process fed all of it: every state is a sum (or, for the mistakes of wide confusion levels, a
concatenation), synced by torchmetrics on compute()."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hmc.hierarchy import Hierarchy
from hmc.metrics import HierarchicalMetrics

SPLIT = 23  # unequal halves: rank 0 gets 23 rows, rank 1 the other 41
# max_dense=3: the order level (3 nodes) keeps a dense matrix, family and species mistake keys.
OPTIONS = {"top_k": (1, 3), "max_dense": 3, "max_pairs": 50}


def _data():
    h = Hierarchy.from_paths(
        [
            (f"o{i}", f"o{i}f{j}", f"o{i}f{j}s{k}")
            for i in range(3)
            for j in range(2)
            for k in range(3)
        ]
        + [("o0", "o0f9")],  # a leaf at level 2: ragged
        level_names=["order", "family", "species"],
    )
    g = torch.Generator().manual_seed(0)
    b = 64
    probs = torch.rand(b, h.num_nodes, generator=g)
    targets = torch.randint(-1, h.num_nodes, (b,), generator=g)
    pred = h.level_targets(torch.randint(0, h.num_nodes, (b,), generator=g))
    pred[::5, 2] = -1  # some early stops
    return h, probs, targets, pred


def _run(h, probs, targets, pred):
    m = HierarchicalMetrics(h, **OPTIONS)
    half = len(targets) // 2  # two updates per process
    m.update(probs[:half], targets[:half], pred[:half])
    m.update(probs[half:], targets[half:], pred[half:])
    return m.compute(), m.confusions()


def _worker(rank: int, world: int, store: str, out: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    try:
        torch.set_num_threads(1)
        h, probs, targets, pred = _data()
        rows = slice(0, SPLIT) if rank == 0 else slice(SPLIT, None)
        values, confusions = _run(h, probs[rows], targets[rows], pred[rows])
        # A process without a single batch still syncs: rank 1 updates nothing here.
        idle = HierarchicalMetrics(h, metrics=["acc", "confusion"], **OPTIONS)
        if rank == 0:
            idle.update(probs, targets, pred)
        saved = {"values": values, "confusions": confusions, "idle": idle.confusions()}
        torch.save(saved, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_gloo_processes_equal_one_process(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    h, probs, targets, pred = _data()
    want, want_conf = _run(h, probs, targets, pred)
    assert all(len(v) for v in want_conf.values())  # mistakes at the dense and wide levels
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert got["values"].keys() == want.keys()
        for k, w in want.items():
            g = got["values"][k]
            if k.startswith("ece/") or k == "hf1/macro":
                # float64 sums, added in another order: equal to rounding
                torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)
            elif math.isnan(float(w)):
                assert math.isnan(float(g)), k
            else:
                assert float(g) == float(w), (k, float(g), float(w))  # integer states: exact
        assert got["confusions"] == want_conf
        assert got["idle"] == want_conf
