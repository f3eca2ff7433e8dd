"""The HRN combinatorial state distribution: level sweeps shared by the loss and the decoders.

States are the empty state (score 0) and, for every node v, the path from level 1 down to v
(score S(v) = sum of the node scores on that path). With R(u) = log sum over the states in
u's subtree of exp(S(state) - S(u)) (R = 0 at a leaf, and R(root) = log Z), a bottom-up sweep
gives

    R(u) = log(1 + sum_{c child of u} exp(s_c + R(c)))            (the 1 is "stop at u")
    log q(c) = s_c + R(c) - R(parent(c))                          (P(go to c | reached parent))

and a top-down sweep gives the marginals P(v on the path) = prod of q along v's path. The
loss of label l is -log P(l on the path) = -sum of log q over l's path, and its gradient with
respect to s_v is P(v) - P(v | the path reaches l). Every term log q <= 0 is computed locally,
so there is no cancellation between two large log-partition values.

Everything runs node-major ([N, B], a level's nodes are contiguous rows), because segment
reductions along dim 0 are several times faster on CPU than along dim 1 of [B, N].
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from hmc.hierarchy import Hierarchy

__all__ = ["StatePlan", "state_plan", "log_conditionals", "marginals_from_log_conditionals"]


@dataclass(frozen=True)
class StatePlan:
    """Per-device index tensors of a hierarchy for the level sweeps. D levels, N nodes.

    offsets: D + 1 Python ints; level d (1..D) is rows offsets[d-1]:offsets[d].
    parents: D entries; parents[d-1] is the [n_d] long index of each level-d node's parent
        within level d-1 (None for level 1, whose parent is the root).
    paths: [N, D] as HierarchyTensors.paths. levels: [N] in 1..D. is_leaf: [N] bool.
    """

    offsets: tuple[int, ...]
    parents: tuple[torch.Tensor | None, ...]
    paths: torch.Tensor
    levels: torch.Tensor
    is_leaf: torch.Tensor

    @property
    def num_levels(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_nodes(self) -> int:
        return self.offsets[-1]

    def level(self, d: int) -> slice:
        return slice(self.offsets[d - 1], self.offsets[d])


_PLANS: dict[tuple[int, str], tuple[weakref.ref, StatePlan]] = {}


def state_plan(h: Hierarchy, device: torch.device | str | None = None) -> StatePlan:
    """The :class:`StatePlan` of ``h`` on ``device``, built once and cached while ``h`` lives."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    key = (id(h), str(dev))
    hit = _PLANS.get(key)
    if hit is not None and hit[0]() is h:
        return hit[1]
    t = h.tensors(dev)
    offsets = tuple(int(x) for x in t.level_offsets.tolist())
    parents: list[torch.Tensor | None] = [None]
    for d in range(2, len(offsets)):
        lo, hi = offsets[d - 1], offsets[d]
        parents.append((t.parent[lo:hi] - offsets[d - 2]).contiguous())
    plan = StatePlan(offsets, tuple(parents), t.paths, t.levels, t.is_leaf)
    _PLANS[key] = (weakref.ref(h, lambda _, k=key: _PLANS.pop(k, None)), plan)
    return plan


def log_conditionals(plan: StatePlan, s_t: torch.Tensor) -> torch.Tensor:
    """Bottom-up sweep. s_t: [N, B] node scores, node-major (already sigmoided if wanted).
    Returns [N, B] log q: log P(the path goes on to node v | it reached v's parent).

    Differentiable when autograd is on (the per-segment maxima are detached; the result does
    not depend on them). Cost O(N x B), a few kernels per level.
    """
    track = torch.is_grad_enabled() and s_t.requires_grad
    out = None if track else torch.empty_like(s_t)
    parts: list[torch.Tensor] = []
    r = None  # R of the current level's nodes; None means all zero (only leaves below)
    for d in range(plan.num_levels, 0, -1):
        sl = plan.level(d)
        x = s_t[sl] if r is None else s_t[sl] + r  # [n_d, B]
        p = plan.parents[d - 1]
        if p is None:  # level 1: one segment, the root
            m = x.detach().amax(0, keepdim=True).clamp_min(0)  # [1, B]
            z = x - m
            log_tot = torch.log(torch.exp(-m) + torch.exp(z).sum(0, keepdim=True))
            lq = z - log_tot
        else:
            n_par = plan.offsets[d - 1] - plan.offsets[d - 2]
            # m >= 0 also covers the "stop" term exp(0) and parents without children.
            m = x.new_zeros(n_par, x.shape[1])
            m = m.scatter_reduce_(0, p[:, None].expand_as(x), x.detach(), "amax")
            z = x - m.index_select(0, p)
            log_tot = torch.log(torch.exp(-m).index_add(0, p, torch.exp(z)))  # [n_par, B]
            lq = z - log_tot.index_select(0, p)
            r = m + log_tot
        if out is None:
            parts.append(lq)
        else:
            out[sl] = lq
    if out is None:
        return torch.cat(parts[::-1], 0)
    return out


def marginals_from_log_conditionals(plan: StatePlan, log_q: torch.Tensor) -> torch.Tensor:
    """Top-down sweep. log_q: [N, B] from :func:`log_conditionals`. Returns [N, B] node
    marginals P(v on the path), as products of conditionals (no log-space cancellation)."""
    q = torch.exp(log_q)
    parts: list[torch.Tensor] = []
    prev = None
    for d in range(1, plan.num_levels + 1):
        qd = q[plan.level(d)]
        prev = qd if prev is None else prev.index_select(0, plan.parents[d - 1]) * qd
        parts.append(prev)
    return torch.cat(parts, 0)


def path_sums(plan: StatePlan, w_t: torch.Tensor) -> torch.Tensor:
    """[N, B] sum of ``w_t`` ([N, B]) over each node's path from level 1 (cumulative sums down
    the levels): the score of the state that ends at each node."""
    parts: list[torch.Tensor] = []
    prev = None
    for d in range(1, plan.num_levels + 1):
        wd = w_t[plan.level(d)]
        prev = wd if prev is None else prev.index_select(0, plan.parents[d - 1]) + wd
        parts.append(prev)
    return torch.cat(parts, 0)


def _path_values(plan: StatePlan, x_t: torch.Tensor, targets: torch.Tensor):
    """[B, D] values of x_t ([N, B]) on each target's path, and the [B, D] validity mask."""
    path = plan.paths[targets]  # [B, D]
    valid = path >= 0
    cols = torch.arange(targets.shape[0], device=targets.device)[:, None]
    return x_t[path.clamp_min(0), cols], valid, path


class CombinatorialNLL(torch.autograd.Function):
    """-log P(label on the path) per sample, with a hand-written backward (two level sweeps).

    forward(s [B, N] float, targets [B] long in [0, N), plan) -> [B]. The gradient with
    respect to s is g * (P(v) - P(v | the path reaches the label)).
    """

    @staticmethod
    def forward(ctx, s: torch.Tensor, targets: torch.Tensor, plan: StatePlan) -> torch.Tensor:
        with torch.autocast(s.device.type, enabled=False):
            s_t = s.t().contiguous()  # [N, B]
            log_q = log_conditionals(plan, s_t)
            vals, valid, _ = _path_values(plan, log_q, targets)
            loss = -torch.where(valid, vals, torch.zeros_like(vals)).sum(1)
        ctx.save_for_backward(log_q, targets)
        ctx.plan = plan
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        log_q, targets = ctx.saved_tensors
        plan: StatePlan = ctx.plan
        with torch.autocast(grad.device.type, enabled=False):
            g = grad.to(log_q.dtype)  # [B]
            q = torch.exp(log_q)  # [N, B]
            out = torch.empty_like(q)
            path = plan.paths[targets]  # [B, D]
            lev = plan.levels[targets]  # [B]
            cols = torch.arange(targets.shape[0], device=targets.device)
            # pc[:, 0] = g * P(v); pc[:, 1] = g * P(v | path reaches l) for v in l's subtree,
            # 0 elsewhere (l's strict ancestors, where it is g, are fixed after the loop).
            pc = None
            for d in range(1, plan.num_levels + 1):
                sl = plan.level(d)
                qd = q[sl]  # [n_d, B]
                if pc is None:
                    pc = torch.stack([qd * g, torch.zeros_like(qd)], 1)  # [n_1, 2, B]
                else:
                    pc = pc.index_select(0, plan.parents[d - 1]) * qd[:, None, :]
                seed = torch.where(lev == d, g, torch.zeros_like(g))
                rows = (path[:, d - 1] - sl.start).clamp_min(0)
                pc[:, 1].index_put_((rows, cols), seed, accumulate=True)
                torch.sub(pc[:, 0], pc[:, 1], out=out[sl])
            strict = (path >= 0) & (
                torch.arange(plan.num_levels, device=g.device)[None, :] < (lev - 1)[:, None]
            )
            minus_g = torch.where(strict, -g[:, None], torch.zeros_like(path, dtype=g.dtype))
            out.index_put_((path.clamp_min(0), cols[:, None].expand_as(path)), minus_g, True)
        return out.t(), None, None
