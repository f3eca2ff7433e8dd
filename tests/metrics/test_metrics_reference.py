"""Every metric against a slow, per-sample reference written with the Hierarchy's Python API
(ids, ancestors, parents; no tensor views), on random ragged trees, random labels at any depth
(and unlabelled samples) and random predictions: consistent paths, early stops, inconsistent
per-level picks, and gaps."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchmetrics.functional.classification import binary_average_precision
from tree_strategies import trees as _trees

from hmc.decoding import DECODERS, SCORE_KINDS, decode
from hmc.hierarchy import Hierarchy
from hmc.metrics import HierarchicalMetrics, evaluate
from hmc.models import leaf_log_marginals


# --------------------------------------------------------------------------- data
def trees(max_depth: int = 4, max_nodes: int = 40):
    return _trees(max_depth=max_depth, max_nodes=max_nodes, keep_depth=False)


@st.composite
def cases(draw, thresholds: int = 200):
    """(hierarchy, node_probs [B, N], targets [B], predictions [B, D])."""
    h = draw(trees())
    n, d = h.num_nodes, h.num_levels
    b = draw(st.integers(1, 30))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    # Probabilities distinct within a row (no ties in rankings) and inside AP bins, away from
    # the bin edges, so binning is unambiguous: p = (bin + u) / T, u in [0.05, 0.95].
    bins = torch.randint(0, thresholds, (b, n), generator=g)
    u = 0.05 + 0.9 * (torch.rand(b, n, generator=g).argsort(1).float() + 0.5) / n
    probs = (bins + u) / thresholds
    if draw(st.booleans()):  # peaked, like a trained model: most scores far below 1 / T
        probs = probs**8
    targets = torch.randint(-1, n, (b,), generator=g)
    targets[targets < 0] = -100
    kind = draw(st.sampled_from(["argmax", "paths", "random", "given_none"]))
    if kind == "given_none":
        return h, probs, targets, None
    paths = h.tensors().paths
    off = h.tensors().level_offsets
    if kind == "argmax":
        pred = torch.stack(
            [probs[:, h.level_slice(k)].argmax(1) + off[k - 1] for k in range(1, d + 1)], 1
        )
    elif kind == "paths":  # consistent, with early stops
        pred = paths[torch.randint(0, n, (b,), generator=g)]
        stop = torch.randint(0, d + 1, (b,), generator=g)
        pred[torch.arange(d)[None, :] >= stop[:, None]] = -1
    else:  # any node of the right level per column, some -1 (also gaps)
        sizes = off[1:] - off[:-1]
        pick = (torch.rand(b, d, generator=g) * sizes).long() + off[:-1]
        pred = torch.where(torch.rand(b, d, generator=g) < 0.2, -1, pick)
    # Same-answer shortcut for half the rows: predictions equal to the targets' paths.
    same = (torch.rand(b, generator=g) < 0.3) & (targets >= 0)
    pred[same] = h.level_targets(targets)[same]
    return h, probs, targets, pred


# ----------------------------------------------------------------------- reference
def _ids(h: Hierarchy, col: int) -> list[str]:
    return list(h.ancestors(h.nodes[col]))


def _lca_level(h: Hierarchy, a: int, b: int) -> int:
    k = 0
    for x, y in zip(_ids(h, a), _ids(h, b), strict=False):
        if x != y:
            break
        k += 1
    return k


def _level_cols(h: Hierarchy, d: int) -> list[int]:
    return [h.index(x) for x in h.level_nodes(d)]


def _ap_exact(pairs: list[tuple[float, bool]]) -> float:
    """Step-wise average precision over distinct score thresholds (as sklearn)."""
    total = sum(lab for _, lab in pairs)
    if not total:
        return math.nan
    pairs = sorted(pairs, key=lambda x: -x[0])
    ap, tp, fp, prev_recall, i = 0.0, 0, 0, 0.0, 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            tp += pairs[j][1]
            fp += not pairs[j][1]
            j += 1
        recall = tp / total
        ap += (recall - prev_recall) * tp / (tp + fp)
        prev_recall, i = recall, j
    return ap


def _ap_binned(pairs: list[tuple[float, bool]], thresholds: int) -> float:
    """AP at thresholds j / T, a score x counting as >= j / T when min(T-1, floor(xT)) >= j."""
    total = sum(lab for _, lab in pairs)
    if not total:
        return math.nan
    pos, neg = [0] * thresholds, [0] * thresholds
    for s, lab in pairs:
        b = min(thresholds - 1, max(0, math.floor(s * thresholds)))
        (pos if lab else neg)[b] += 1
    ap = 0.0
    for j in range(thresholds):
        tp, fp = sum(pos[j:]), sum(neg[j:])
        ap += pos[j] / total * (tp / (tp + fp) if tp + fp else 1.0)
    return ap


def reference(h, probs, targets, pred, top_k=(1, 5), ahd_k=(1, 5), thresholds=200, n_bins=15):
    d_levels = h.num_levels
    names = h.level_names
    probs = probs.tolist()
    if pred is None:
        pred = [
            [
                max(_level_cols(h, d), key=lambda c, r=r: (probs[r][c], -c))
                for d in range(1, d_levels + 1)
            ]
            for r in range(len(probs))
        ]
    else:
        pred = pred.tolist()
    acc_ok, acc_n = [0] * d_levels, [0] * d_levels
    fpa = tice = n = 0
    inter = psize = tsize = 0
    macro = []
    sev, mistakes = 0, 0
    top_hits = {k: [0] * d_levels for k in top_k}
    ahd_h = {j: 0 for j in ahd_k}
    ahd_n = {j: 0 for j in ahd_k}
    ap_all: list[tuple[float, bool]] = []
    ap_lvl: list[list[tuple[float, bool]]] = [[] for _ in range(d_levels)]
    ece_rows: list[list[tuple[float, bool]]] = [[] for _ in range(d_levels)]
    confusion: list[Counter] = [Counter() for _ in range(d_levels)]
    for r, t in enumerate(targets.tolist()):
        if t < 0:
            continue
        n += 1
        path = [h.index(x) for x in _ids(h, t)]
        level = len(path)
        p = pred[r][:level]
        for d in range(level):
            acc_n[d] += 1
            acc_ok[d] += p[d] == path[d]
            if p[d] >= 0 and p[d] != path[d]:
                confusion[d][(h.nodes[path[d]], h.nodes[p[d]])] += 1
        fpa += p == path
        # Consistent: the predicted nodes are exactly the ancestors of the deepest one.
        m = 0
        while m < level and p[m] >= 0:
            m += 1
        consistent = all(x < 0 for x in p[m:]) and (
            m == 0 or [h.index(x) for x in _ids(h, p[m - 1])] == p[:m]
        )
        tice += not consistent
        pset = set()
        for x in p:
            if x >= 0:
                pset |= set(_ids(h, x))
        tset = set(_ids(h, t))
        inter += len(pset & tset)
        psize += len(pset)
        tsize += len(tset)
        macro.append(2 * len(pset & tset) / (len(pset) + len(tset)))
        if p[level - 1] != t:
            mistakes += 1
            deepest = [x for x in p if x >= 0]
            sev += level - (_lca_level(h, deepest[-1], t) if deepest else 0)
        for d in range(1, level + 1):
            cols = _level_cols(h, d)
            ranked = sorted(cols, key=lambda c, r=r: (-probs[r][c], c))
            for k in top_k:
                top_hits[k][d - 1] += path[d - 1] in ranked[:k]
            for c in cols:
                ap_all.append((probs[r][c], c == path[d - 1]))
                ap_lvl[d - 1].append((probs[r][c], c == path[d - 1]))
            ece_rows[d - 1].append((probs[r][ranked[0]], ranked[0] == path[d - 1]))
        ranked = sorted(_level_cols(h, level), key=lambda c, r=r: (-probs[r][c], c))
        for j in ahd_k:
            for c in ranked[:j]:
                ahd_h[j] += level - _lca_level(h, c, t)
                ahd_n[j] += 1

    def div(a, b):
        return a / b if b else math.nan

    out = {f"acc/{names[d]}": div(acc_ok[d], acc_n[d]) for d in range(d_levels)}
    vals = [v for v in out.values() if not math.isnan(v)]
    out["acc/mean"] = sum(vals) / len(vals) if vals else math.nan
    for k in top_k:
        out.update({f"top{k}/{names[d]}": div(top_hits[k][d], acc_n[d]) for d in range(d_levels)})
    out["fpa"] = div(fpa, n)
    out["tice"] = div(tice, n)
    hp, hr = div(inter, psize), div(inter, tsize)
    out.update(hp=hp, hr=hr, hf1=div(2 * inter, psize + tsize))
    out["hf1/macro"] = div(sum(macro), len(macro))
    out["mistake_severity"] = div(sev, mistakes)
    out.update({f"ahd@{j}": div(ahd_h[j], ahd_n[j]) for j in ahd_k})
    out["ap/micro"] = _ap_binned(ap_all, thresholds) if ap_all else math.nan
    for d in range(d_levels):
        rows = ap_lvl[d]
        out[f"ap/{names[d]}"] = _ap_binned(rows, thresholds) if rows else math.nan
    for d in range(d_levels):
        rows = ece_rows[d]
        ece = 0.0
        for b in range(n_bins + 1):
            inb = [(c, ok) for c, ok in rows if min(int(c * n_bins), n_bins) == b]
            if inb:
                gap = sum(ok for _, ok in inb) - sum(c for c, _ in inb)
                ece += abs(gap) / len(rows)
        out[f"ece/{names[d]}"] = ece if rows else math.nan
    return out, confusion, (ap_all, ap_lvl)


def assert_metrics_equal(got: dict, want: dict, tol: float = 1e-5) -> None:
    assert set(got) == set(want), set(got) ^ set(want)
    for k, w in want.items():
        g = float(got[k])
        if math.isnan(w):
            assert math.isnan(g), (k, g, w)
        else:
            assert abs(g - w) <= tol, (k, g, w)


# ---------------------------------------------------------------------------- tests
@given(cases())
def test_all_metrics_match_reference(case):
    h, probs, targets, pred = case
    m = HierarchicalMetrics(h, top_k=(1, 5), max_dense=2, max_pairs=1000)
    half = len(targets) // 2  # two updates: states accumulate
    m.update(probs[:half], targets[:half], None if pred is None else pred[:half])
    m.update(probs[half:], targets[half:], None if pred is None else pred[half:])
    want, confusion, _ = reference(h, probs, targets, pred)
    assert_metrics_equal(m.compute(), want)
    got_conf = m.confusions()
    for d, name in enumerate(h.level_names):
        expect = sorted(
            confusion[d].items(), key=lambda kv: (-kv[1], h.index(kv[0][0]), h.index(kv[0][1]))
        )
        assert got_conf[name] == [(t, p, c) for (t, p), c in expect]


@given(cases())
@settings(max_examples=25)
def test_evaluate_matches_class_and_reference(case):
    h, probs, targets, pred = case
    got = evaluate(
        h, probs.numpy(), targets.numpy(), None if pred is None else pred.numpy(), batch_size=7
    )
    want, _, _ = reference(h, probs, targets, pred, top_k=(5,))
    assert_metrics_equal(got, {k: v for k, v in want.items() if not k.startswith("top1/")})
    # Without probabilities only the prediction metrics are there.
    if pred is not None:
        got = evaluate(h, None, targets, pred)
        keep = ("acc/", "fpa", "tice", "hp", "hr", "hf1", "mistake_severity")
        assert_metrics_equal(got, {k: v for k, v in want.items() if k.startswith(keep)})


def _bin(score: float, thresholds: int) -> int:
    return min(thresholds - 1, max(0, math.floor(score * thresholds)))


def _binning_bound(pairs: list[tuple[float, bool]], thresholds: int) -> float:
    """Largest possible |binned AP - exact AP|: (1/P) sum_j pos_j (n_j - 1) / N_j over bins j
    with n_j scores, N_j scores in bins >= j. (A positive's exact precision u / M and its bin's
    precision (u + du) / (M + dM), with 0 <= u <= M, 0 <= du <= dM <= n_j - 1 and M + dM =
    N_j, differ by at most dM / N_j.)"""
    pos, size = Counter(), Counter()
    for s, lab in pairs:
        size[_bin(s, thresholds)] += 1
        pos[_bin(s, thresholds)] += lab
    bound, above = 0.0, 0
    for j in sorted(size, reverse=True):
        above += size[j]
        bound += pos[j] * (size[j] - 1) / above
    return bound / sum(pos.values())


@given(cases())
@settings(max_examples=25)
def test_binned_ap_is_exact_ap_of_the_binned_scores_and_within_its_bound(case):
    h, probs, targets, pred = case
    m = HierarchicalMetrics(h, metrics=["ap"], thresholds=200)
    m.update(probs, targets, pred)
    got = m.compute()
    _, _, (ap_all, ap_lvl) = reference(h, probs, targets, pred)
    for key, pairs in [("ap/micro", ap_all)] + list(
        zip([f"ap/{name}" for name in h.level_names], ap_lvl, strict=True)
    ):
        value = float(got[key])
        if not any(lab for _, lab in pairs):
            assert math.isnan(value), key
            continue
        # Exact (sklearn-style, ties as one threshold) AP of the scores replaced by their bin.
        binned = [(_bin(s, 200), lab) for s, lab in pairs]
        assert value == pytest.approx(_ap_exact(binned), abs=1e-6), key
        # ... and of the scores themselves, up to what binning can change.
        assert abs(value - _ap_exact(pairs)) <= _binning_bound(pairs, 200) + 1e-6, key
    if ap_all:  # a third implementation: torchmetrics' exact AP of the binned scores
        scores, labels = zip(*[(_bin(s, 200), lab) for s, lab in ap_all], strict=True)
        if any(labels):
            tm = binary_average_precision(torch.tensor(scores) / 200.0, torch.tensor(labels).long())
            assert float(got["ap/micro"]) == pytest.approx(float(tm), abs=1e-5)


@given(cases(), st.sampled_from([4, 200, 256]))
@settings(max_examples=25)
def test_ap_with_scores_on_the_bin_edges(case, thresholds):
    h, probs, targets, pred = case
    # Scores exactly j / T in float32 (0 and 1 included): the binning rule decides.
    probs = (probs * thresholds).round() / thresholds
    m = HierarchicalMetrics(h, metrics=["ap"], thresholds=thresholds)
    m.update(probs, targets, pred)
    want, _, _ = reference(h, probs, targets, pred, thresholds=thresholds)
    assert_metrics_equal(m.compute(), {k: v for k, v in want.items() if k.startswith("ap/")})


@pytest.mark.parametrize("thresholds", [64, 200, 257])
def test_binned_ap_equals_exact_ap_with_one_score_per_bin(thresholds):
    g = torch.Generator().manual_seed(thresholds)
    h = Hierarchy.from_paths([(f"g{i}", f"g{i}s{j}") for i in range(3) for j in range(3)])
    b = 5
    # Every score at the centre of its own bin: then binning loses nothing.
    perm = torch.randperm(thresholds, generator=g)[: b * h.num_nodes].view(b, -1)
    probs = (perm.float() + 0.5) / thresholds
    targets = torch.randint(0, h.num_nodes, (b,), generator=g)
    m = HierarchicalMetrics(h, metrics=["ap"], thresholds=thresholds)
    m.update(probs, targets)
    got = m.compute()
    _, _, (ap_all, ap_lvl) = reference(h, probs, targets, None)
    assert float(got["ap/micro"]) == pytest.approx(_ap_exact(ap_all), abs=1e-6)
    # ... and the reference agrees with torchmetrics' exact (unbinned) average precision.
    scores, labels = zip(*ap_all, strict=True)
    tm = binary_average_precision(torch.tensor(scores), torch.tensor(labels).long())
    assert float(tm) == pytest.approx(_ap_exact(ap_all), abs=1e-6)
    for d, name in enumerate(h.level_names):
        exact = _ap_exact(ap_lvl[d])
        assert float(got[f"ap/{name}"]) == pytest.approx(exact, abs=1e-6)


@given(
    trees(),
    st.integers(0, 2**31),
    st.sampled_from(SCORE_KINDS),
    # "paper" reads the leaf logits, not in a bare score tensor (tests/test_decoding.py).
    st.sampled_from([d for d in DECODERS if d != "paper"]),
)
@settings(max_examples=30)
def test_every_decoder_output_feeds_the_metrics(h, seed, score_kind, decoder):
    g = torch.Generator().manual_seed(seed)
    b = 12
    if score_kind == "leaf_log_probs":
        leaf_logits = torch.randn(b, len(h.leaves), generator=g) * 2
        scores = leaf_log_marginals(h, leaf_logits)
    else:
        scores = torch.randn(b, h.num_nodes, generator=g) * 2
    decoded = decode(h, scores, decoder, score_kind=score_kind)
    targets = torch.randint(-1, h.num_nodes, (b,), generator=g)
    m = HierarchicalMetrics(h, top_k=(1, 5))
    m.update(decoded.node_probs, targets, decoded.nodes)
    want, confusion, _ = reference(h, decoded.node_probs, targets, decoded.nodes)
    assert_metrics_equal(m.compute(), want)
    if decoder != "argmax":  # the consistent decoders never give an inconsistent path
        tice = float(m.compute()["tice"])
        assert tice == 0 or math.isnan(tice)
