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

import contextlib
from dataclasses import dataclass, field

import torch

from hmc.hierarchy import Hierarchy

__all__ = [
    "CombinatorialNLL",
    "StatePlan",
    "log_conditionals",
    "marginals_from_log_conditionals",
    "path_sums",
    "state_plan",
]


@dataclass(frozen=True)
class StatePlan:
    """Per-device index tensors of a hierarchy for the level sweeps. D levels, N nodes.

    offsets: D + 1 Python ints; level d (1..D) is rows offsets[d-1]:offsets[d].
    parents: D entries; parents[d-1] is the [n_d] long index of each level-d node's parent
        within level d-1 (None for level 1, whose parent is the root).
    paths: [N, D] as HierarchyTensors.paths. levels: [N] in 1..D. is_leaf: [N] bool.
    path_pad: [N, D] paths with -1 replaced by N (a padding row of the sweep buffers).
    strict_pad: [N, D] like path_pad, N also at the node itself (strict ancestors only).
    """

    offsets: tuple[int, ...]
    parents: tuple[torch.Tensor | None, ...]
    paths: torch.Tensor
    levels: torch.Tensor
    is_leaf: torch.Tensor
    path_pad: torch.Tensor
    strict_pad: torch.Tensor
    _columns: dict[int, torch.Tensor] = field(default_factory=dict, compare=False, repr=False)

    def columns(self, b: int) -> torch.Tensor:
        """[b] arange on the plan's device, cached."""
        cols = self._columns.get(b)
        if cols is None:
            cols = self._columns[b] = torch.arange(b, device=self.paths.device)
        return cols

    @property
    def num_levels(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_nodes(self) -> int:
        return self.offsets[-1]

    def level(self, d: int) -> slice:
        return slice(self.offsets[d - 1], self.offsets[d])


def _no_autocast(t: torch.Tensor):
    """Autocast off for the sweeps (they must run in the input's float32); a no-op context when
    autocast is off anyway, which is cheaper to enter."""
    if torch.is_autocast_enabled(t.device.type):
        return torch.autocast(t.device.type, enabled=False)
    return contextlib.nullcontext()


def state_plan(h: Hierarchy, device: torch.device | str | None = None) -> StatePlan:
    """The :class:`StatePlan` of ``h`` on ``device``, built once and cached by the hierarchy."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    return h.derived("state_plan", dev, lambda: _build_plan(h, dev))


def _build_plan(h: Hierarchy, dev: torch.device) -> StatePlan:
    t = h.tensors(dev)
    offsets = tuple(int(x) for x in t.level_offsets.tolist())
    parents: list[torch.Tensor | None] = [None]
    for d in range(2, len(offsets)):
        lo, hi = offsets[d - 1], offsets[d]
        parents.append((t.parent[lo:hi] - offsets[d - 2]).contiguous())
    n = t.paths.shape[0]
    depth = torch.arange(t.paths.shape[1], device=dev)
    path_pad = torch.where(t.paths >= 0, t.paths, n)
    strict_pad = torch.where(depth[None, :] < (t.levels - 1)[:, None], path_pad, n)
    return StatePlan(offsets, tuple(parents), t.paths, t.levels, t.is_leaf, path_pad, strict_pad)


def log_conditionals(plan: StatePlan, s_t: torch.Tensor) -> torch.Tensor:
    """Bottom-up sweep. s_t: [N, B] node scores, node-major (already sigmoided if wanted).
    Returns [N, B] log q: log P(the path goes on to node v | it reached v's parent).

    Differentiable when autograd is on (the per-segment maxima are detached; the result does
    not depend on them). Cost O(N x B), a few kernels per level.
    """
    if not (torch.is_grad_enabled() and s_t.requires_grad):
        out = torch.empty_like(s_t)
        _log_conditionals_into(plan, s_t, out)
        return out
    parts: list[torch.Tensor] = []
    r = None  # R of the current level's nodes; None means all zero (only leaves below)
    for d in range(plan.num_levels, 0, -1):
        sl = plan.level(d)
        x = s_t[sl] if r is None else s_t[sl] + r  # [n_d, B]
        p = plan.parents[d - 1]
        if p is None:  # level 1: one segment, the root
            m = x.detach().amax(0, keepdim=True).clamp_min(0)  # [1, B]
            z = x - m
            parts.append(z - torch.log(torch.exp(-m) + torch.exp(z).sum(0, keepdim=True)))
        else:
            n_par = plan.offsets[d - 1] - plan.offsets[d - 2]
            # m >= 0 also covers the "stop" term exp(0) and parents without children.
            m = x.new_zeros(n_par, x.shape[1])
            m = m.scatter_reduce_(0, p[:, None].expand_as(x), x.detach(), "amax")
            z = x - m.index_select(0, p)
            log_tot = torch.log(torch.exp(-m).index_add(0, p, torch.exp(z)))  # [n_par, B]
            parts.append(z - log_tot.index_select(0, p))
            r = m + log_tot
    return torch.cat(parts[::-1], 0)


def _log_conditionals_into(plan: StatePlan, s_t: torch.Tensor, out: torch.Tensor) -> None:
    """:func:`log_conditionals` without autograd, into ``out`` ([N + pad, B]; rows N.. are left
    alone), with as few kernels and allocations as possible (the loss's hot path)."""
    r = None
    for d in range(plan.num_levels, 0, -1):
        sl = plan.level(d)
        od = out[sl]
        x = s_t[sl] if r is None else torch.add(s_t[sl], r, out=od)  # [n_d, B]
        p = plan.parents[d - 1]
        if p is None:
            m = x.amax(0, keepdim=True).clamp_min_(0)  # [1, B]
            torch.sub(x, m, out=od)
            log_tot = od.exp().sum(0, keepdim=True).add_(m.neg_().exp_()).log_()
        else:
            m = x.new_zeros(plan.offsets[d - 1] - plan.offsets[d - 2], x.shape[1])
            m = m.scatter_reduce_(0, p[:, None].expand_as(x), x, "amax")
            torch.sub(x, m.index_select(0, p), out=od)  # z = x - (segment max), in place
            log_tot = torch.exp(-m).index_add_(0, p, od.exp()).log_()
            r = m.add_(log_tot)
            log_tot = log_tot.index_select(0, p)
        od.sub_(log_tot)


def marginals_from_log_conditionals(plan: StatePlan, log_q: torch.Tensor) -> torch.Tensor:
    """Top-down sweep. log_q: [N, B] from :func:`log_conditionals`. Returns [N, B] node
    marginals P(v on the path), as products of conditionals (no log-space cancellation)."""
    return _down_paths(plan, torch.exp(log_q), torch.mul)


def path_sums(plan: StatePlan, w_t: torch.Tensor) -> torch.Tensor:
    """[N, B] sum of ``w_t`` ([N, B]) over each node's path from level 1 (cumulative sums down
    the levels): the score of the state that ends at each node."""
    return _down_paths(plan, w_t, torch.add)


def _down_paths(plan: StatePlan, x: torch.Tensor, op) -> torch.Tensor:
    """[N, B] ``op``-accumulation of ``x`` [N, B] down each node's path from level 1."""
    parts: list[torch.Tensor] = []
    prev = None
    for d in range(1, plan.num_levels + 1):
        xd = x[plan.level(d)]
        prev = xd if prev is None else op(prev.index_select(0, plan.parents[d - 1]), xd)
        parts.append(prev)
    return torch.cat(parts, 0)


class CombinatorialNLL(torch.autograd.Function):
    """-log P(label on the path) per sample, with a hand-written backward (two level sweeps).

    forward(x [B, N] float, targets [B] long in [0, N), plan, sigmoid: bool) -> [B], where the
    node scores are ``sigmoid(x)`` or ``x``. The gradient with respect to the node scores is
    g * (P(v) - C(v)), C(v) = P(v | the path reaches the label); the sigmoid's is applied by
    chain rule in the same node-major layout. The returned gradient is a transposed
    (column-major) view, which matmul backward consumes as is.

    Why a hand-written backward rather than autograd through :func:`log_conditionals`: it pays
    on large trees only, which is where a head-only step (cached features, a linear layer and
    this loss) spends its time. ``python benchmarks/loss.py --threads 1`` at iNaturalist-2021
    size (16,327 nodes, 7 levels), B = 256, forward + backward: README run 98.2 ms vs 140.0 ms
    for autograd (1.43x) next to 252.6 ms for the ``nn.Linear(512, N)`` feeding it; re-run
    2026-12-01 on a loaded 2-core machine (15 rounds): 816 vs 1,007 ms (1.23x) next to 526 ms,
    so linear + loss takes 1,113 instead of 1,532 ms (-27%). Peak memory 6.35 vs 6.76 [B, N]
    float32 buffers. At CUB size (251 nodes) it gains nothing (30.3 vs 28.6 ms at B = 256:
    Python overhead dominates both).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, targets: torch.Tensor, plan: StatePlan, sigmoid: bool):
        with _no_autocast(x):
            s_t = x.t().contiguous()  # [N, B]; a view of x itself when B == 1
            if sigmoid:
                s_t = torch.sigmoid(s_t) if s_t.data_ptr() == x.data_ptr() else s_t.sigmoid_()
            b = targets.shape[0]
            q = s_t.new_zeros(plan.num_nodes + 1, b)  # row N: padding, log q = 0
            _log_conditionals_into(plan, s_t, q)
            cols = plan.columns(b)[:, None]
            loss = q[plan.path_pad[targets], cols].sum(1).neg_()  # -sum of log q on l's path
            if ctx.needs_input_grad[0]:
                q = q.exp_()  # the backward needs only q (and this saves a [N, B] buffer)
                ctx.save_for_backward(q, targets, s_t if sigmoid else None)
                ctx.plan = plan
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        q, targets, sig = ctx.saved_tensors
        plan: StatePlan = ctx.plan
        with _no_autocast(grad):
            g = grad.to(q.dtype)  # [B]
            b = targets.shape[0]
            cols = plan.columns(b)
            out = torch.empty_like(q)  # [N + 1, B], becomes g * (P - C), node-major
            # C is 1 on l's strict ancestors (fixed after the loop), a top-down product of q
            # seeded with 1 at l inside l's subtree, 0 elsewhere. Above the shallowest label of
            # the batch only P is needed, so C lives in rows from that level down.
            first = int(plan.levels[targets].min()) if b else plan.num_levels + 1
            base = plan.offsets[min(first, plan.num_levels) - 1]
            c_buf = q.new_zeros(plan.num_nodes - base, b)
            if b:
                c_buf.index_put_((targets - base, cols), g)
            c_prev = p_prev = None
            for d in range(1, plan.num_levels + 1):
                sl = plan.level(d)
                qd = q[sl]  # [n_d, B]
                dest = out[sl] if d < first else None  # above `first`, out = g * P directly
                if p_prev is None:
                    pd = torch.mul(qd, g, out=dest)
                else:
                    pd = torch.index_select(p_prev, 0, plan.parents[d - 1], out=dest).mul_(qd)
                p_prev = pd
                if d < first:
                    continue
                cd = c_buf[sl.start - base : sl.stop - base]
                if c_prev is not None:
                    cd.addcmul_(c_prev.index_select(0, plan.parents[d - 1]), qd)
                c_prev = cd
                torch.sub(pd, cd, out=out[sl])
            rows = plan.strict_pad[targets]  # [B, D], N (the padding row) where not strict
            out.index_put_((rows, cols[:, None].expand_as(rows)), g.neg()[:, None], True)
            out = out[: plan.num_nodes]
            if sig is not None:
                out = torch.ops.aten.sigmoid_backward.grad_input(out, sig, grad_input=out)
        return out.t(), None, None, None
