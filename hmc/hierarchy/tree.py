"""The label tree: ids, levels, level-major column order, tensor views and validation.

Column order (the currency of the whole package): every score tensor has one column per
non-root node, level-major. All level-1 nodes come first, then all level-2 nodes, and so on.
Within a level, nodes are sorted by their parent's column, then by the order in which they
were given (file order). So siblings are contiguous, and the descendants of any node at any
level form one contiguous column range. The root is level 0 and has no column.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import operator
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cached_property
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx

from hmc.hierarchy import io
from hmc.hierarchy.graph import (
    VIRTUAL_ROOT,
    HierarchyError,
    HierarchyTensors,
    UnknownLabelError,
    _as_str_ids,
    _check_tree,
    _display_name,
    build_tensors,
    graph_from_edges,
    graph_from_paths,
)

# torch is imported inside the functions that build tensors: reading, checking and printing a
# tree (`hmc hierarchy validate`) then starts without torch's multi-second import.
if TYPE_CHECKING:
    import torch

__all__ = ["Hierarchy", "HierarchyError", "HierarchyTensors", "UnknownLabelError", "VIRTUAL_ROOT"]

DICT_FORMAT = "hmc-hierarchy/1"


class Hierarchy:
    """An immutable rooted label tree with a fixed, level-major column order.

    Build one with :meth:`from_edges`, :meth:`from_paths`, :meth:`from_networkx`,
    :meth:`from_file` or :func:`hmc.load_hierarchy`. ``hierarchy.nodes[i]`` is the id of
    column ``i`` of every ``[B, N]`` score tensor.
    """

    def __init__(
        self,
        graph: nx.DiGraph,
        *,
        level_names: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        graph = _check_tree(_as_str_ids(graph), where="graph")
        roots = [n for n in graph if graph.in_degree(n) == 0]
        if len(roots) == 1:
            root = roots[0]
        else:
            root = VIRTUAL_ROOT
            if root in graph:
                raise HierarchyError(f"node id {root!r} is reserved for the virtual root")
            graph.add_node(root, name="root")
            graph.add_edges_from((root, r) for r in roots)
        depth = nx.single_source_shortest_path_length(graph, root)
        num_levels = max(depth.values())
        if num_levels == 0:
            raise HierarchyError("the hierarchy has no nodes below its root")
        if level_names is None:
            level_names = [f"level_{d}" for d in range(1, num_levels + 1)]
        if isinstance(level_names, str):
            raise HierarchyError(
                f"Expected argument `level_names` to be a sequence of names, got {level_names!r}"
            )
        level_names = tuple(str(n) for n in level_names)
        if any(not n.strip() for n in level_names):
            raise HierarchyError(f"empty level name in {list(level_names)}")
        if len(level_names) != num_levels:
            raise HierarchyError(
                f"{len(level_names)} level names {list(level_names)} given, but the tree has "
                f"{num_levels} level(s) below its root; level "
                f"{min(len(level_names), num_levels) + 1} is "
                + ("empty" if len(level_names) > num_levels else "unnamed")
            )
        if len(set(level_names)) != len(level_names):
            raise HierarchyError(f"duplicate level names: {list(level_names)}")

        # Level-major order; within a level, by parent column then given child order.
        order: list[str] = []
        frontier = [root]
        while frontier:
            frontier = [c for p in frontier for c in graph.successors(p)]
            order.extend(frontier)
        self._root = root
        self._nodes: tuple[str, ...] = tuple(order)
        self._index = {n: i for i, n in enumerate(order)}
        self._parent_ids = {n: next(iter(graph.predecessors(n))) for n in order}
        self._children = {n: tuple(graph.successors(n)) for n in [root, *order]}
        self._depth = {n: depth[n] for n in order}
        self._names = {n: _display_name(graph.nodes[n], n) for n in [root, *order]}
        self._attrs = {
            n: {k: v for k, v in graph.nodes[n].items() if k not in ("name", "level")}
            for n in [root, *order]
        }
        self._level_names = level_names
        self._metadata = dict(metadata or {})
        self._derived_cache: dict[tuple[str, str], Any] = {}

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_edges(
        cls,
        edges: Iterable[tuple[str, str]],
        *,
        names: Mapping[str, str] | None = None,
        attributes: Mapping[str, Mapping[str, Any]] | None = None,
        level_names: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Hierarchy:
        """Build from (parent, child) pairs. Siblings keep edge order; parentless nodes keep
        their order of first appearance. One parentless node is the root (no column); several
        hang from a virtual root ``"<root>"``."""
        graph = graph_from_edges(edges, names=names, attributes=attributes)
        return cls(graph, level_names=level_names, metadata=metadata)

    @classmethod
    def from_paths(
        cls,
        rows: Iterable[Sequence[str | None]],
        *,
        level_names: Sequence[str] | None = None,
        names: Mapping[str, str] | None = None,
        attributes: Mapping[str, Mapping[str, Any]] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Hierarchy:
        """Build from top-to-node rows such as ``("Passeriformes", "Parulidae", "Yellow Warbler")``.

        Cell ``d`` of a row is a level-``d+1`` node; the root is implicit (virtual), so even a
        single top-level node gets a column. Rows may be ragged: a shorter row, or trailing
        empty cells, ends higher in the tree. Rows may repeat prefixes of other rows.
        """
        graph = graph_from_paths(rows, names=names, attributes=attributes)
        return cls(graph, level_names=level_names, metadata=metadata)

    @classmethod
    def from_networkx(
        cls,
        graph: nx.DiGraph,
        *,
        level_names: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Hierarchy:
        """Build from a DiGraph with parent -> child edges; node attribute ``name`` is the display
        name, other node attributes are kept. ``graph.graph`` may hold ``level_names`` and
        ``metadata``."""
        return cls(
            _as_str_ids(graph),
            level_names=level_names or graph.graph.get("level_names"),
            metadata=metadata or graph.graph.get("metadata"),
        )

    @classmethod
    def from_file(cls, path: str | Path, format: str | None = None) -> Hierarchy:
        """Read a hierarchy file or NABirds folder. ``format`` is one of ``"tree"``, ``"edges"``,
        ``"paths"``, ``"json"``, ``"nabirds"`` (see ``hmc.hierarchy.io``); by default it is
        guessed from the file's name and first line."""
        return cls._from_file_graph(io.read_graph(path, format=format), str(path))

    @classmethod
    def from_tree_text(cls, text: str, source: str = "<string>") -> Hierarchy:
        """Parse hmc ``.tree`` text (the format of ``hierarchies/*.tree``); errors say
        ``source:line``."""
        return cls._from_file_graph(io.parse_tree(text, source=source), source)

    @classmethod
    def _from_file_graph(cls, graph: nx.DiGraph, source: str) -> Hierarchy:
        try:
            return cls.from_networkx(graph)
        except HierarchyError as e:
            raise HierarchyError(f"{source}: {e}") from None

    def save(self, path: str | Path, format: str | None = None) -> None:
        """Write the hierarchy; ``.tree`` (the hmc format, default) or ``.json`` (node-link)."""
        io.write_hierarchy(self, path, format=format)

    def to_networkx(self) -> nx.DiGraph:
        """A new DiGraph keyed by node id, root included, with ``name``, ``level`` and the
        attributes on the nodes, and ``level_names``/``metadata`` in ``graph.graph``."""
        g = nx.DiGraph(level_names=list(self._level_names), metadata=dict(self._metadata))
        for n in (self._root, *self._nodes):
            level = 0 if n == self._root else self._depth[n]
            g.add_node(n, name=self._names[n], level=level, **self._attrs[n])
        for n in self._nodes:
            g.add_edge(self._parent_ids[n], n)
        return g

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-able description (for checkpoints: loads with ``weights_only=True``)."""
        # Deep copy: callers may edit the dict without touching this (immutable) hierarchy.
        return copy.deepcopy(
            {
                "format": DICT_FORMAT,
                "root": self._root,
                "root_name": self._names[self._root],
                "root_attributes": self._attrs[self._root],
                "level_names": list(self._level_names),
                "metadata": self._metadata,
                "nodes": [
                    [n, self._parent_ids[n], self._names[n], self._attrs[n]] for n in self._nodes
                ],
            }
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Hierarchy:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(data, Mapping):
            raise HierarchyError(f"Expected a dict from Hierarchy.to_dict(), got {type(data)}")
        if data.get("format", DICT_FORMAT) != DICT_FORMAT:
            raise HierarchyError(
                f"Expected format {DICT_FORMAT!r} in the hierarchy dict, got {data['format']!r}"
            )
        missing = [k for k in ("root", "level_names", "nodes") if k not in data]
        if missing:
            raise HierarchyError(f"hierarchy dict lacks the key(s) {missing}")
        g = nx.DiGraph()
        g.add_node(data["root"], **data.get("root_attributes", {}))
        g.nodes[data["root"]]["name"] = data.get("root_name", data["root"])
        seen: set[str] = set()
        for i, row in enumerate(data["nodes"]):
            if not isinstance(row, Sequence) or len(row) != 4:
                raise HierarchyError(
                    f"hierarchy dict: nodes[{i}] must be [id, parent, name, attributes], "
                    f"got {row!r}"
                )
            node, parent, name, attrs = row
            if node in seen or node == data["root"]:
                raise HierarchyError(f"hierarchy dict: duplicate id {node!r} (nodes[{i}])")
            seen.add(node)
            g.add_node(node, **attrs)
            g.nodes[node]["name"] = name
            g.add_edge(parent, node)
        return cls(g, level_names=data["level_names"], metadata=data.get("metadata"))

    # ---------------------------------------------------------------- structure
    @property
    def nodes(self) -> tuple[str, ...]:
        """Node ids in column order (root excluded)."""
        return self._nodes

    @property
    def root(self) -> str:
        return self._root

    @property
    def num_nodes(self) -> int:
        return len(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node: object) -> bool:
        return node in self._index

    @property
    def level_names(self) -> tuple[str, ...]:
        """Names of levels 1..D (index 0 is level 1)."""
        return self._level_names

    @property
    def num_levels(self) -> int:
        return len(self._level_names)

    @property
    def metadata(self) -> dict[str, Any]:
        """Provenance and description (source, licence, ...). A copy."""
        return dict(self._metadata)

    def index(self, node: str) -> int:
        """Column of ``node``; raises :class:`UnknownLabelError` naming close matches."""
        try:
            return self._index[node]
        except (KeyError, TypeError):
            raise UnknownLabelError(self._unknown_message(node)) from None

    def indices(self, nodes: Iterable[str]) -> torch.Tensor:
        """[K] long tensor of the columns of ``nodes``."""
        import torch

        return torch.tensor([self.index(n) for n in nodes], dtype=torch.long)

    def _unknown_message(self, node: object) -> str:
        if node == self._root:
            return f"{node!r} is the root of the hierarchy, which has no column"
        close = difflib.get_close_matches(str(node), self._nodes, n=3)
        by_name = [n for n in self._nodes if self._names[n] == node]
        hint = ""
        if by_name:
            hint = f"; it is the display name of {by_name[:3]}"
        elif close:
            hint = f"; did you mean {close}?"
        label = self._metadata.get("name", "the hierarchy")
        return f"label {node!r} is not a node of {label}{hint}"

    def _id(self, node: str | int) -> str:
        """Id of a node given by id (the root included) or column (int-like)."""
        if isinstance(node, str):
            if node != self._root:
                self.index(node)
            return node
        try:
            col = operator.index(node)  # int, numpy integer, integer 0-d tensor
        except TypeError:
            raise UnknownLabelError(self._unknown_message(node)) from None
        if not 0 <= col < len(self._nodes):
            raise IndexError(f"column {col} out of range for {len(self._nodes)} nodes")
        return self._nodes[col]

    def name(self, node: str | int) -> str:
        """Display name of a node id or column."""
        return self._names[self._id(node)]

    @cached_property
    def names(self) -> tuple[str, ...]:
        """Display names in column order."""
        return tuple(self._names[n] for n in self._nodes)

    def attributes(self, node: str | int) -> dict[str, Any]:
        """Attributes of a node (a copy)."""
        return dict(self._attrs[self._id(node)])

    def level(self, node: str | int) -> int:
        """Level of a node, 1..D (the root is 0)."""
        n = self._id(node)
        return 0 if n == self._root else self._depth[n]

    def parent(self, node: str | int) -> str | None:
        """Parent id; the root's id for level-1 nodes, None for the root."""
        n = self._id(node)
        return None if n == self._root else self._parent_ids[n]

    def children(self, node: str | int | None = None) -> tuple[str, ...]:
        """Child ids in column order; of the root when ``node`` is None."""
        return self._children[self._root if node is None else self._id(node)]

    def ancestors(self, node: str | int) -> tuple[str, ...]:
        """Ids from level 1 down to ``node`` inclusive."""
        n = self._id(node)
        chain = []
        while n != self._root:
            chain.append(n)
            n = self._parent_ids[n]
        return tuple(reversed(chain))

    def is_leaf(self, node: str | int) -> bool:
        return not self._children[self._id(node)]

    @cached_property
    def leaves(self) -> tuple[str, ...]:
        """Leaf ids in column order."""
        return tuple(n for n in self._nodes if not self._children[n])

    def level_slice(self, level: int | str) -> slice:
        """Columns of one level, by number (1..D) or name."""
        d = self.level_number(level)
        offsets = self._level_offsets
        return slice(offsets[d - 1], offsets[d])

    def level_nodes(self, level: int | str) -> tuple[str, ...]:
        return self._nodes[self.level_slice(level)]

    def level_sizes(self) -> dict[str, int]:
        """Number of nodes per level, by level name."""
        offsets = self._level_offsets
        return {n: offsets[d + 1] - offsets[d] for d, n in enumerate(self._level_names)}

    def level_number(self, level: int | str) -> int:
        """Level number 1..D of a level given by number or name; raises naming the levels."""
        if isinstance(level, str):
            if level not in self._level_names:
                raise HierarchyError(
                    f"unknown level {level!r}; levels are {list(self._level_names)}"
                )
            return self._level_names.index(level) + 1
        if not 1 <= level <= self.num_levels:
            raise HierarchyError(f"level {level} out of range 1..{self.num_levels}")
        return int(level)

    @cached_property
    def _level_offsets(self) -> list[int]:
        sizes = Counter(self._depth.values())  # nodes are level-major: offsets are cumsums
        return [0, *accumulate(sizes[d] for d in range(1, self.num_levels + 1))]

    def leaves_below(self, node: str | int) -> torch.Tensor:
        """[K] columns of the leaves in ``node``'s subtree (``node`` itself if a leaf; all
        leaves for the root), ascending. O(L); no leaves x nodes matrix."""
        n = self._id(node)
        t = self.tensors()
        if n == self._root:
            return t.leaves.clone()
        col = self._index[n]
        return t.leaves[t.paths[t.leaves, self._depth[n] - 1] == col]

    # ------------------------------------------------------------ tensor views
    def tensors(self, device: torch.device | str | None = None) -> HierarchyTensors:
        """Index tensors on ``device``, computed once per device and cached."""

        def build() -> HierarchyTensors:
            if device is None or str(device) == "cpu":
                return self._build_tensors()
            cpu = self.tensors()
            return HierarchyTensors(
                **{f: getattr(cpu, f).to(device) for f in HierarchyTensors.__dataclass_fields__}
            )

        return self.derived("tensors", device, build)

    def derived(
        self, name: str, device: torch.device | str | None, build: Callable[[], Any]
    ) -> Any:
        """``build()``, computed once per ``name`` and device and cached with the tensor views
        (the tree is immutable). Layers above keep their per-device index data here, e.g. the
        state plans of :func:`hmc.sweeps.state_plan`."""
        import torch

        key = (name, str(torch.device(device) if device is not None else torch.device("cpu")))
        if key not in self._derived_cache:
            self._derived_cache[key] = build()
        return self._derived_cache[key]

    def _build_tensors(self) -> HierarchyTensors:
        return build_tensors(
            self._nodes,
            self._parent_ids,
            self._depth,
            self.num_levels,
            self._level_offsets,
            [not self._children[x] for x in self._nodes],
        )

    def level_targets(self, targets: torch.Tensor) -> torch.Tensor:
        """Per-level targets. targets: [B] columns (negative = unlabelled) -> [B, D] columns,
        -1 below a coarse label and everywhere for unlabelled samples."""
        import torch

        _check_columns(targets)
        paths = self.tensors(targets.device).paths
        valid = targets >= 0
        out = paths[targets.clamp_min(0)]
        return torch.where(valid[:, None], out, torch.full_like(out, -1))

    # --------------------------------------------------------------- distances
    def lca_level(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Level of the lowest common ancestor of columns ``a`` and ``b``; 0 when it is the
        root, -1 where ``a`` or ``b`` is negative (unlabelled). ``a`` and ``b`` broadcast
        (e.g. [B, 1] against [1, K] gives [B, K]). Cost O(numel x D), no pairwise matrix."""
        import torch

        paths = self.tensors(a.device).paths
        pa, pb = paths[a.clamp_min(0)], paths[b.clamp_min(0)]
        # Ancestor chains are prefixes, so equality at level k implies equality above it.
        lca = ((pa == pb) & (pa >= 0)).sum(-1)
        return torch.where((a < 0) | (b < 0), torch.full_like(lca, -1), lca)

    def tree_distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Number of edges between columns ``a`` and ``b`` (broadcastable shapes); -1 where
        ``a`` or ``b`` is negative."""
        import torch

        levels = self.tensors(a.device).levels
        dist = levels[a.clamp_min(0)] + levels[b.clamp_min(0)] - 2 * self.lca_level(a, b)
        return torch.where((a < 0) | (b < 0), torch.full_like(dist, -1), dist)

    # ----------------------------------------------------------------- derived
    def restrict(self, nodes: Iterable[str | int], *, descendants: bool = False) -> Hierarchy:
        """The sub-tree spanned by ``nodes`` (ids or columns, at any depth) and their ancestors,
        e.g. ``cub200.restrict(species_in_my_data)``. With ``descendants=True`` the subtrees
        below ``nodes`` are kept too. Relative column order, names and attributes are kept;
        trailing levels that end up empty are dropped. :meth:`map_targets` translates targets."""
        g = self.to_networkx()
        keep: set[str] = set()
        for node in nodes:
            n = self._id(node)
            keep.update(self.ancestors(n), nx.descendants(g, n) if descendants else ())
        if not keep:
            raise HierarchyError("restrict() needs at least one node below the root")
        g.remove_nodes_from([n for n in self._nodes if n not in keep])
        meta = dict(self._metadata)
        meta["restricted_from"] = (
            f"{self._metadata.get('name', 'hierarchy')} ({self.fingerprint()})"
        )
        num_levels = max(self._depth[n] for n in keep)
        return Hierarchy(g, level_names=self._level_names[:num_levels], metadata=meta)

    def column_map(self, other: Hierarchy) -> torch.Tensor:
        """[N] column in ``other`` of each of this hierarchy's columns, -1 where the node is
        not in ``other``. To translate targets use :meth:`map_targets`, which keeps unlabelled
        (negative) targets negative."""
        import torch

        return torch.tensor([other._index.get(n, -1) for n in self._nodes], dtype=torch.long)

    def map_targets(self, targets: torch.Tensor, other: Hierarchy) -> torch.Tensor:
        """Targets [B] in this hierarchy's columns -> the same nodes' columns in ``other``.

        Unlabelled targets (negative) keep their value (e.g. -100); a node missing from
        ``other`` becomes -1 (unlabelled there). Works after :meth:`restrict`, or between two
        versions of a tree that share ids."""
        import torch

        _check_columns(targets)
        if targets.numel() and int(targets.max()) >= self.num_nodes:
            raise HierarchyError(
                f"target {int(targets.max())} is not a column of {self!r} (N={self.num_nodes})"
            )
        mapped = self.column_map(other).to(targets.device)[targets.clamp_min(0)]
        return torch.where(targets < 0, targets, mapped)

    def fingerprint(self) -> str:
        """sha256 of the structure and column order (not of names or attributes)."""
        data = json.dumps(
            [list(self._level_names), [[n, self._parent_ids[n]] for n in self._nodes]]
        )
        return hashlib.sha256(data.encode()).hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Hierarchy) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    def __copy__(self) -> Hierarchy:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Hierarchy:
        # Immutable: copies (e.g. when torchmetrics clones a collection) can share it.
        return self

    def __getstate__(self) -> dict[str, Any]:
        return self.to_dict()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(Hierarchy.from_dict(state).__dict__)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={v}" for k, v in self.level_sizes().items())
        label = self._metadata.get("name")
        head = f"{label!r}, " if label else ""
        return f"Hierarchy({head}{sizes}, leaves={len(self.leaves)})"

    def describe(self, max_children: int = 8) -> str:
        """A readable tree with counts per level (what ``hmc hierarchy show`` prints)."""
        return io.format_outline(self, max_children=max_children)


def _check_columns(targets: torch.Tensor) -> None:
    if targets.is_floating_point() or str(targets.dtype) == "torch.bool":
        raise HierarchyError(
            f"Expected `targets` to be an integer tensor of columns, got {targets.dtype}"
        )
