"""Hypothesis strategies shared by the reference tests (not a test module)."""

from __future__ import annotations

from hypothesis import strategies as st

from hmc.hierarchy import Hierarchy


@st.composite
def trees(draw, max_depth: int = 5, max_nodes: int = 40, keep_depth: bool = True) -> Hierarchy:
    """Random trees below an explicit root "R", ragged or not, with 1..max_depth levels.
    ``keep_depth`` forces the drawn depth; otherwise a ragged draw may end shallower."""
    depth = draw(st.integers(1, max_depth))
    ragged = draw(st.booleans())
    edges: list[tuple[str, str]] = []
    frontier = ["R"]
    for d in range(1, depth + 1):
        nxt: list[str] = []
        for parent in frontier:
            # Non-ragged trees give every node children until the last level.
            low = 0 if (ragged and d > 1) else 1
            k = draw(st.integers(low, 3 if len(edges) < max_nodes else low))
            for _ in range(k):
                child = f"n{len(edges)}"
                edges.append((parent, child))
                nxt.append(child)
        if not nxt:
            if not keep_depth:
                break
            child = f"n{len(edges)}"
            edges.append((frontier[0], child))
            nxt.append(child)
        frontier = nxt
    return Hierarchy.from_edges(edges)
