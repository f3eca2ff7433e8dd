"""Reading and writing hierarchy files. Errors name the file and line.

Readers return a validated ``nx.DiGraph`` whose ``graph.graph`` holds ``level_names`` and
``metadata``; :meth:`hmc.hierarchy.Hierarchy.from_file` builds itself from it, so this module
never imports the class.

Formats (``format=`` names):

- ``tree``: the hmc format of ``hierarchies/*.tree`` (see ``hierarchies/README.md``).
- ``edges``: parent-child CSV/TSV, header ``parent,child`` (optional ``name`` column for the
  child's display name).
- ``paths``: path table CSV/TSV whose header names the levels; one row per root-to-node path,
  ragged rows end in empty cells.
- ``json``: networkx node-link JSON (``links`` or ``edges`` key).
- ``nabirds``: NABirds' own ``classes.txt`` + ``hierarchy.txt`` (pass the folder or either file).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx

from hmc.hierarchy.graph import (
    VIRTUAL_ROOT,
    HierarchyError,
    _check_tree,
    graph_from_edges,
    graph_from_paths,
)

if TYPE_CHECKING:  # format_tree reads only the public accessors; io never builds a Hierarchy
    from hmc.hierarchy.tree import Hierarchy

FORMATS = ("tree", "edges", "paths", "json", "nabirds")
MAGIC = "# hmc-hierarchy 1"
NABIRDS_LEVELS = ("level_1", "level_2", "level_3", "level_4")


def guess_format(path: Path) -> str:
    """Format name from the file's name and first line."""
    if path.is_dir():
        if (path / "hierarchy.txt").is_file() and (path / "classes.txt").is_file():
            return "nabirds"
        raise HierarchyError(
            f"{path}: a folder is read only as NABirds (classes.txt + hierarchy.txt)"
        )
    if path.name in ("hierarchy.txt", "classes.txt"):
        return "nabirds"
    suffix = path.suffix.lower()
    if suffix == ".tree":
        return "tree"
    if suffix == ".json":
        return "json"
    if suffix in (".csv", ".tsv", ".txt"):
        first = _read_text(path).split("\n", 1)[0].strip()
        if first.startswith(MAGIC):
            return "tree"
        if suffix == ".txt" and "\t" not in first and "," not in first:
            # A bare .txt list ("1 Phoebastria nigripes") is no table we can read safely.
            raise HierarchyError(
                f"{path}:1: unknown hierarchy format: a .txt file must start with {MAGIC!r} or "
                f"be a tab/comma-separated table, got {first[:60]!r} (formats: "
                f"{', '.join(FORMATS)})"
            )
        header = [c.strip().lower() for c in _split(first, _delimiter(path, first))]
        if header[:2] == ["parent", "child"]:
            return "edges"
        if {"parent", "child"} & set(header):
            raise HierarchyError(
                f"{path}:1: header {header} names parent/child columns, but an edges table "
                "must start with 'parent,child[,name]' in this order (any other header is read "
                "as a paths table, one column per level)"
            )
        return "paths"
    raise HierarchyError(
        f"{path}: unknown hierarchy format {suffix or '(no extension)'!r}; "
        f"expected .tree, .csv, .tsv, .json or a NABirds folder (formats: {', '.join(FORMATS)})"
    )


def _read_text(path: Path) -> str:
    """The file as UTF-8 text; another encoding is an error naming the line and byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise HierarchyError(
            f"{path}:{line}: not UTF-8 (byte {data[err.start]:#04x} at offset {err.start}); "
            "hierarchy files must be UTF-8: re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None


def read_graph(path: str | Path, format: str | None = None) -> nx.DiGraph:
    """The tree in a hierarchy file or NABirds folder, with ``graph.graph["level_names"]`` and
    ``graph.graph["metadata"]``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"hierarchy file not found: {path}")
    fmt = format or guess_format(path)
    readers = {
        "tree": _read_tree,
        "edges": _read_edges,
        "paths": _read_paths,
        "json": _read_json,
        "nabirds": _read_nabirds,
    }
    if fmt not in readers:
        raise HierarchyError(f"{path}: unknown format {fmt!r}; expected one of {list(FORMATS)}")
    return readers[fmt](path)


def write_hierarchy(h: Hierarchy, path: str | Path, format: str | None = None) -> None:
    path = Path(path)
    fmt = format or ("json" if path.suffix.lower() == ".json" else "tree")
    if fmt == "json":
        data = nx.node_link_data(h.to_networkx(), edges="links")
        path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    elif fmt == "tree":
        path.write_text(format_tree(h), encoding="utf-8")
    else:
        raise HierarchyError(f"cannot write format {fmt!r}; write 'tree' or 'json'")


# ------------------------------------------------------------------ hmc .tree format
RESERVED_ATTRIBUTES = ("name", "level")
RESERVED_METADATA = ("levels",)


def _plain(text: str) -> bool:
    return "\t" not in text and "\n" not in text and "\r" not in text


def _encode_value(key: str, value: Any) -> str:
    if isinstance(value, str) and _plain(value):
        return f"{key}={value}"
    return f"{key}:={json.dumps(value, ensure_ascii=False)}"


def _lines(text: str) -> list[str]:
    # Not str.splitlines(): names may hold U+0085, U+2028 and friends, which it splits on.
    return [line.rstrip("\r") for line in text.split("\n")]


def _check_key(key: Any, what: str) -> None:
    if not isinstance(key, str) or not key or "=" in key or key.endswith(":") or not _plain(key):
        raise HierarchyError(
            f"{what} key {key!r} cannot be written to .tree: keys are non-empty strings "
            "without '=', tabs or newlines, and do not end with ':'"
        )


def format_tree(h: Hierarchy) -> str:
    """The hmc ``.tree`` text of ``h``: metadata lines, then one node per line, parents first."""
    out = [MAGIC]
    for key, value in h.metadata.items():
        _check_key(key, "metadata")
        if key in RESERVED_METADATA or key.endswith(":="):
            raise HierarchyError(f"metadata key {key!r} is reserved in the .tree format")
        if isinstance(value, str) and _plain(value):
            out.append(f"@{key}\t{value}")
        else:
            out.append(f"@{key}:=\t{json.dumps(value, ensure_ascii=False)}")
    for level in h.level_names:
        if not _plain(level):
            raise HierarchyError(f"level name {level!r} cannot contain tabs or newlines")
    out.append("@levels\t" + "\t".join(h.level_names))
    out.append("# id\tparent\tname\tattributes (key=value, or key:=json)")
    # A virtual root is implicit (parentless rows hang from it) unless a single top node, a
    # name or attributes would otherwise be lost: then it is written like a real root.
    root_attrs = h.attributes(h.root)
    write_root = (
        h.root != VIRTUAL_ROOT or len(h.children()) == 1 or h.name(h.root) != "root" or root_attrs
    )
    rows = [(h.root, "")] if write_root else []
    for n in h.nodes:
        parent = h.parent(n)
        rows.append((n, "" if parent == h.root and not write_root else parent))
    for node, parent in rows:
        name, attrs = h.name(node), h.attributes(node)
        if not node or node != node.strip() or node[0] in "#@" or not _plain(node):
            raise HierarchyError(
                f"node {node!r}: in the .tree format an id is non-empty, has no surrounding "
                "spaces, tabs or newlines, and does not start with '#' or '@'"
            )
        if not _plain(name):
            raise HierarchyError(f"node {node!r}: display name {name!r} has a tab or newline")
        cells = [node, parent, name]
        for k, v in attrs.items():
            _check_key(k, f"node {node!r}: attribute")
            cells.append(_encode_value(k, v))
        out.append("\t".join(cells))
    return "\n".join(out) + "\n"


def _read_tree(path: Path) -> nx.DiGraph:
    text = _read_text(path)
    return parse_tree(text, source=str(path))


def parse_tree(text: str, source: str = "<string>") -> nx.DiGraph:
    """Parse hmc ``.tree`` text into a validated graph; errors say ``source:line``."""
    metadata: dict[str, Any] = {}
    level_names = None
    graph = nx.DiGraph()
    defined: dict[str, int] = {}
    parent_of: dict[str, tuple[str, int]] = {}
    for lineno, line in enumerate(_lines(text), 1):
        if not line.strip() or line.startswith("#"):
            continue
        where = f"{source}:{lineno}"
        if line.startswith("@"):
            key, _, value = line[1:].partition("\t")
            if not key:
                raise HierarchyError(f"{where}: metadata line without a key: {line!r}")
            if key == "levels":
                level_names = value.split("\t")
                if any(not v.strip() for v in level_names):
                    raise HierarchyError(f"{where}: empty level name in {level_names}")
            elif key.endswith(":="):
                metadata[key[:-2]] = _json(value, where)
            else:
                metadata[key] = value
            continue
        cells = line.split("\t")
        if len(cells) < 3:
            raise HierarchyError(
                f"{where}: malformed row, expected 'id<TAB>parent<TAB>name[<TAB>key=value...]', "
                f"got {len(cells)} field(s): {line!r}"
            )
        node, parent, name = cells[0].strip(), cells[1].strip(), cells[2]
        if not node:
            raise HierarchyError(f"{where}: empty node id")
        if node in defined:
            raise HierarchyError(
                f"{where}: duplicate id {node!r} (first defined on line {defined[node]})"
            )
        attrs: dict[str, Any] = {}
        for cell in cells[3:]:
            if not cell:
                continue
            if "=" not in cell:
                raise HierarchyError(f"{where}: attribute {cell!r} is not key=value")
            key, value = cell.split("=", 1)
            if key.endswith(":"):
                key = key[:-1]
                value = _json(value, where)
            if not key or key in RESERVED_ATTRIBUTES:
                raise HierarchyError(
                    f"{where}: node {node!r}: attribute key {key!r} is "
                    + ("empty" if not key else f"reserved ({', '.join(RESERVED_ATTRIBUTES)})")
                )
            if key in attrs:
                raise HierarchyError(f"{where}: node {node!r}: attribute {key!r} given twice")
            attrs[key] = value
        defined[node] = lineno
        graph.add_node(node, **attrs)
        graph.nodes[node]["name"] = name or node
        if parent:
            parent_of[node] = (parent, lineno)
    for node, (parent, lineno) in parent_of.items():
        if parent not in defined:
            raise HierarchyError(
                f"{source}:{lineno}: parent {parent!r} of {node!r} is not defined in the file"
            )
        graph.add_edge(parent, node)
    if not defined:
        raise HierarchyError(f"{source}: no nodes")
    _check_tree(graph, where=source, lines=defined)
    return _with_meta(graph, level_names, metadata)


def _with_meta(graph: nx.DiGraph, level_names: Any, metadata: dict[str, Any]) -> nx.DiGraph:
    graph.graph["level_names"] = level_names
    graph.graph["metadata"] = metadata
    return graph


def _json(value: str, where: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise HierarchyError(f"{where}: bad JSON value {value!r}: {e}") from None


# ------------------------------------------------------------------ tables
def _delimiter(path: Path, first_line: str) -> str:
    if path.suffix.lower() == ".tsv" or "\t" in first_line:
        return "\t"
    return ","


def _split(line: str, delimiter: str) -> list[str]:
    return next(csv.reader(io.StringIO(line), delimiter=delimiter), [])


def _rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    text = _read_text(path)
    lines = [(i, line) for i, line in enumerate(_lines(text), 1) if line.strip()]
    lines = [(i, line) for i, line in lines if not line.startswith("#")]
    if not lines:
        raise HierarchyError(f"{path}: no rows")
    delimiter = _delimiter(path, lines[0][1])
    header = [c.strip() for c in _split(lines[0][1], delimiter)]
    rows = [(i, [c.strip() for c in _split(line, delimiter)]) for i, line in lines[1:]]
    return header, rows


def _read_edges(path: Path) -> nx.DiGraph:
    header, rows = _rows(path)
    cols = [c.lower() for c in header]
    if cols[:2] != ["parent", "child"]:
        raise HierarchyError(f"{path}:1: expected a header 'parent,child[,name]', got {header}")
    for lineno, row in rows:
        if len(row) != len(header):
            raise HierarchyError(
                f"{path}:{lineno}: malformed row, expected {len(header)} fields {header}, "
                f"got {len(row)}: {row}"
            )
    names = {row[1]: row[cols.index("name")] for _, row in rows} if "name" in cols else None
    edges = [(row[0], row[1]) for _, row in rows]
    lines = [lineno for lineno, _ in rows]
    graph = graph_from_edges(edges, names=names, source=str(path), lines=lines)
    _check_tree(graph, where=str(path))
    return _with_meta(graph, None, {"source": str(path.name)})


def _read_paths(path: Path) -> nx.DiGraph:
    header, rows = _rows(path)
    if any(not c for c in header):
        raise HierarchyError(f"{path}:1: empty column name in header {header}")
    for lineno, row in rows:
        if len(row) > len(header):
            raise HierarchyError(
                f"{path}:{lineno}: malformed row, {len(row)} fields but {len(header)} levels "
                f"{header}: {row}"
            )
    lines = [lineno for lineno, _ in rows]
    graph = graph_from_paths([row for _, row in rows], source=str(path), lines=lines)
    depth = nx.dag_longest_path_length(graph)  # unused trailing columns name no level
    return _with_meta(graph, header[:depth], {"source": path.name})


def _read_json(path: Path) -> nx.DiGraph:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise HierarchyError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(data, dict) or "nodes" not in data:
        raise HierarchyError(f"{path}: not networkx node-link JSON (no 'nodes' key)")
    key = "links" if "links" in data else "edges"
    # networkx adds a node for any link end it has not seen; other formats reject those.
    declared = {n.get("id") for n in data["nodes"] if isinstance(n, dict)}
    for i, link in enumerate(data.get(key) or []):
        for end in ("source", "target"):
            if isinstance(link, dict) and end in link and link[end] not in declared:
                raise HierarchyError(
                    f"{path}: {key}[{i}] {end} {link[end]!r} is not a declared node "
                    f"(not in 'nodes')"
                )
    try:
        graph = nx.node_link_graph(data, directed=True, multigraph=False, edges=key)
    except (KeyError, TypeError) as e:
        raise HierarchyError(f"{path}: malformed node-link JSON: missing {e}") from None
    graph.graph.setdefault("metadata", {"source": path.name})
    return graph


def _read_nabirds(path: Path) -> nx.DiGraph:
    folder = path if path.is_dir() else path.parent
    classes_file, hierarchy_file = folder / "classes.txt", folder / "hierarchy.txt"
    for f in (classes_file, hierarchy_file):
        if not f.is_file():
            raise HierarchyError(f"NABirds: {f.name} not found under {folder}")
    graph = nx.DiGraph()
    for lineno, line in enumerate(_lines(classes_file.read_text(encoding="utf-8")), 1):
        if not line.strip():
            continue
        cid, _, name = line.strip().partition(" ")
        if not cid.isdigit() or not name:
            raise HierarchyError(f"{classes_file}:{lineno}: malformed row {line!r}")
        if cid in graph:
            raise HierarchyError(f"{classes_file}:{lineno}: duplicate id {cid!r}")
        graph.add_node(cid, name=name.strip())
    edges, lines = [], []
    for lineno, line in enumerate(_lines(hierarchy_file.read_text(encoding="utf-8")), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise HierarchyError(f"{hierarchy_file}:{lineno}: malformed row {line!r}")
        child, parent = parts
        for node in (child, parent):
            if node not in graph:
                raise HierarchyError(
                    f"{hierarchy_file}:{lineno}: class {node!r} is not in {classes_file.name}"
                )
        edges.append((parent, child))
        lines.append(lineno)
    graph.add_edges_from(graph_from_edges(edges, source=str(hierarchy_file), lines=lines).edges)
    _check_tree(graph, where=str(hierarchy_file))
    orphans = [n for n in graph if graph.degree(n) == 0]
    if orphans and graph.number_of_nodes() > 1:
        graph.remove_nodes_from(orphans)  # ids listed in classes.txt but unused in the tree
    roots = [n for n in graph if graph.in_degree(n) == 0]
    depth = nx.dag_longest_path_length(graph) if len(roots) == 1 else 0
    levels = NABIRDS_LEVELS[:depth] if 0 < depth <= len(NABIRDS_LEVELS) else None
    meta = {"name": "nabirds", "source": f"NABirds {classes_file.name} + {hierarchy_file.name}"}
    return _with_meta(graph, levels, meta)


# ------------------------------------------------------------------ outline (for people)
def format_outline(h: Hierarchy, max_children: int = 8) -> str:
    """A readable tree with counts per level: at most ``max_children`` children per node."""
    lines = [repr(h)]
    for k, v in h.metadata.items():
        if k in ("source", "licence", "license", "description"):
            lines.append(f"  {k}: {v}")

    def walk(node: str, indent: int) -> None:
        kids = h.children(node)
        for c in kids[:max_children]:
            tag = f"{h.level_names[h.level(c) - 1]}: "
            name = h.name(c)
            label = name if name == c else f"{name} [{c}]"
            extra = f" ({len(h.children(c))})" if h.children(c) else ""
            lines.append("  " * indent + f"- {tag}{label}{extra}")
            walk(c, indent + 1)
        if len(kids) > max_children:
            lines.append("  " * indent + f"  ... {len(kids) - max_children} more")

    walk(h.root, 1)
    return "\n".join(lines)
