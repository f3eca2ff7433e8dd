"""The tree as a graph: errors, validation, graph builders and the tensor-view type.

Everything here works on ``nx.DiGraph``; :mod:`hmc.hierarchy.tree` turns a validated graph
into a :class:`~hmc.hierarchy.Hierarchy`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import networkx as nx

# torch is imported inside the functions that build tensors: reading, checking and printing a
# tree (`hmc hierarchy validate`) then starts without torch's multi-second import.
if TYPE_CHECKING:
    import torch

VIRTUAL_ROOT = "<root>"


class HierarchyError(ValueError):
    """A hierarchy that is not a rooted tree, or a file that does not describe one."""

    __module__ = "hmc.hierarchy"  # its public home, shown in tracebacks


class UnknownLabelError(HierarchyError, KeyError):
    """A label that is not a node of the hierarchy."""

    __module__ = "hmc.hierarchy"

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


@dataclass(frozen=True)
class HierarchyTensors:
    """Index tensors of a hierarchy on one device. N nodes, D levels, L leaves.

    parent: [N] column of each node's parent, -1 for level-1 nodes.
    paths: [N, D] column of each node's ancestor at level d+1 (the node itself at its own
        level), -1 below the node's level.
    levels: [N] level of each node, 1..D.
    level_offsets: [D + 1] level d's columns are level_offsets[d-1]:level_offsets[d].
    is_leaf: [N] bool.
    leaves: [L] columns of the leaves, ascending.
    """

    parent: torch.Tensor
    paths: torch.Tensor
    levels: torch.Tensor
    level_offsets: torch.Tensor
    is_leaf: torch.Tensor
    leaves: torch.Tensor


def graph_from_edges(
    edges: Iterable[tuple[str, str]],
    *,
    names: Mapping[str, str] | None = None,
    attributes: Mapping[str, Mapping[str, Any]] | None = None,
    source: str | None = None,
    lines: Sequence[int] | None = None,
) -> nx.DiGraph:
    """DiGraph of (parent, child) pairs; siblings in edge order. Errors name the edge (or
    ``source:line`` when ``lines`` gives each edge's line in the file ``source``)."""
    at, ref = _places("edge", source, lines)
    graph = nx.DiGraph()
    seen: dict[str, tuple[str, int]] = {}
    for i, edge in enumerate(edges):
        if isinstance(edge, str) or len(edge) != 2:
            raise HierarchyError(f"{at(i)}: expected (parent, child), got {edge!r}")
        parent, child = (str(x) for x in edge)
        if not parent or not child:
            raise HierarchyError(f"{at(i)}: empty parent or child in {list(edge)}")
        if parent == child:
            raise HierarchyError(f"{at(i)}: node {child!r} is its own parent (a cycle)")
        if child in seen:
            if seen[child][0] == parent:
                continue
            first, j = seen[child]
            raise HierarchyError(
                f"{at(i)}: node {child!r} has two parents, {first!r}{ref(j)} and {parent!r}"
            )
        seen[child] = (parent, i)
        graph.add_edge(parent, child)
    return _annotate(graph, names, attributes, "the edges")


def graph_from_paths(
    rows: Iterable[Sequence[str | None]],
    *,
    names: Mapping[str, str] | None = None,
    attributes: Mapping[str, Mapping[str, Any]] | None = None,
    source: str | None = None,
    lines: Sequence[int] | None = None,
) -> nx.DiGraph:
    """DiGraph of top-to-node rows under a virtual root. Errors name the row (or
    ``source:line`` when ``lines`` gives each row's line in the file ``source``)."""
    at, ref = _places("row", source, lines)
    graph = nx.DiGraph()
    graph.add_node(VIRTUAL_ROOT, name="root")
    seen: dict[str, tuple[str, int]] = {}
    for i, row in enumerate(rows):
        if isinstance(row, str):
            raise HierarchyError(f"{at(i)}: expected a sequence of ids, got the string {row!r}")
        cells = [None if c is None else str(c).strip() for c in row]
        while cells and not cells[-1]:
            cells.pop()
        if not cells:
            continue
        if any(not c for c in cells):
            raise HierarchyError(f"{at(i)}: empty cell inside the path {list(row)!r}")
        for parent, child in zip([VIRTUAL_ROOT, *cells[:-1]], cells, strict=True):
            if child in seen and seen[child][0] != parent:
                first, j = seen[child]
                raise HierarchyError(
                    f"{at(i)}: node {child!r} has two parents, {_parent_str(first)}{ref(j)} "
                    f"and {_parent_str(parent)}"
                )
            if child not in seen:
                seen[child] = (parent, i)
                graph.add_edge(parent, child)
    return _annotate(graph, names, attributes, "any path")


def _places(what: str, source: str | None, lines: Sequence[int] | None) -> tuple[Any, Any]:
    """How errors name input item i, and refer back to item j: ``"row 3"``, ``" (row 3)"``; or
    ``"file.csv:7"``, ``" (line 7)"`` when ``lines`` gives each item's line in ``source``."""
    if lines is not None:
        return (lambda i: f"{source}:{lines[i]}"), (lambda j: f" (line {lines[j]})")
    return (lambda i: f"{what} {i}"), (lambda j: f" ({what} {j})")


def _annotate(
    graph: nx.DiGraph,
    names: Mapping[str, str] | None,
    attributes: Mapping[str, Mapping[str, Any]] | None,
    where: str,
) -> nx.DiGraph:
    for node, name in (names or {}).items():
        if node not in graph:
            raise UnknownLabelError(f"name given for {node!r}, which is not in {where}")
        graph.nodes[node]["name"] = name
    for node, attrs in (attributes or {}).items():
        if node not in graph:
            raise UnknownLabelError(f"attributes given for {node!r}, which is not in {where}")
        graph.nodes[node].update(attrs)
    return graph


def build_tensors(
    nodes: Sequence[str],
    parent_ids: Mapping[str, str],
    depth: Mapping[str, int],
    num_levels: int,
    level_offsets: Sequence[int],
    is_leaf: Sequence[bool],
) -> HierarchyTensors:
    """CPU index tensors of nodes given in column order (parents before children)."""
    import torch

    n = len(nodes)
    index = {node: i for i, node in enumerate(nodes)}
    parent = torch.full((n,), -1, dtype=torch.long)
    paths = torch.full((n, num_levels), -1, dtype=torch.long)
    levels = torch.empty(n, dtype=torch.long)
    for i, node in enumerate(nodes):
        lvl = depth[node]
        levels[i] = lvl
        p = index.get(parent_ids[node])  # None for level-1 nodes (their parent is the root)
        if p is not None:
            parent[i] = p
            paths[i, : lvl - 1] = paths[p, : lvl - 1]
        paths[i, lvl - 1] = i
    leaf = torch.tensor(list(is_leaf), dtype=torch.bool)
    return HierarchyTensors(
        parent=parent,
        paths=paths,
        levels=levels,
        level_offsets=torch.tensor(list(level_offsets), dtype=torch.long),
        is_leaf=leaf,
        leaves=leaf.nonzero().flatten(),
    )


def _parent_str(parent: str) -> str:
    return "the top level" if parent == VIRTUAL_ROOT else repr(parent)


def _display_name(data: Mapping[str, Any], node: str) -> str:
    name = data.get("name")
    return node if name is None or name == "" else str(name)


def _as_str_ids(graph: nx.DiGraph) -> nx.DiGraph:
    """``graph`` with string node ids (a relabelled copy if needed), rejecting ids that
    collide once converted (``1`` and ``"1"``) and empty ids."""
    if not isinstance(graph, nx.DiGraph):
        raise HierarchyError(f"Expected a networkx.DiGraph, got {type(graph).__name__}")
    if all(isinstance(n, str) and n for n in graph):
        return graph
    mapping: dict[Any, str] = {}
    seen: dict[str, Any] = {}
    for n in graph:
        s = str(n)
        if not s:
            raise HierarchyError("empty node id")
        if s in seen:
            raise HierarchyError(f"duplicate id {s!r} (nodes {seen[s]!r} and {n!r})")
        seen[s] = n
        mapping[n] = s
    return nx.relabel_nodes(graph, mapping, copy=True)


def _check_tree(
    graph: nx.DiGraph, *, where: str, lines: Mapping[str, int] | None = None
) -> nx.DiGraph:
    """Copy ``graph`` and check that it is a forest of rooted trees, naming the offender (and
    its line, when ``lines`` maps ids to line numbers)."""

    def at(node: Any) -> str:
        return f"{where}:{lines[node]}" if lines and node in lines else where

    g = nx.DiGraph(graph)
    if g.number_of_nodes() == 0:
        raise HierarchyError(f"{where}: the hierarchy is empty")
    for node in g:
        if g.in_degree(node) > 1:
            parents = sorted(map(str, g.predecessors(node)))
            raise HierarchyError(f"{at(node)}: node {node!r} has {len(parents)} parents: {parents}")
    try:
        cycle = nx.find_cycle(g)
    except nx.NetworkXNoCycle:
        return g
    chain = " -> ".join(repr(u) for u, _ in cycle) + f" -> {cycle[0][0]!r}"
    raise HierarchyError(f"{at(cycle[0][0])}: cycle {chain} (node {cycle[0][0]!r})")
