"""Reading datasets' own annotation files: label lookup, text tables, layout checks, image
listing. Every error names the file (and line) at fault."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from hmc.hierarchy import Hierarchy, UnknownLabelError

__all__ = ["LabelResolver", "find_root", "image_files", "read_rows", "require"]


# ------------------------------------------------------------------ label lookup
class LabelResolver:
    """Maps labels written in annotation files to node columns: a node id, or a display name
    that belongs to exactly one node. Unknown or ambiguous labels raise, naming ``where``."""

    def __init__(self, hierarchy: Hierarchy, *, allow_names: bool = True) -> None:
        self.hierarchy = hierarchy
        self._cache: dict[str, int] = {}
        self._by_name: dict[str, list[str]] = {}
        if allow_names:
            for node, name in zip(hierarchy.nodes, hierarchy.names, strict=True):
                self._by_name.setdefault(name, []).append(node)

    def __call__(self, label: str, where: str) -> int:
        col = self._cache.get(label)
        if col is not None:
            return col
        h = self.hierarchy
        if label in h:
            col = h.index(label)
        else:
            owners = self._by_name.get(label, [])
            if len(owners) > 1:
                raise UnknownLabelError(
                    f"{where}: label {label!r} is ambiguous: it is the display name of "
                    f"{len(owners)} nodes {owners[:5]}; use a node id"
                )
            if not owners:
                try:
                    h.index(label)
                except UnknownLabelError as e:
                    raise UnknownLabelError(f"{where}: {e}") from None
            col = h.index(owners[0])
        self._cache[label] = col
        return col


# ----------------------------------------------------------------- text tables
def read_rows(path: Path, num_fields: int, *, split_all: bool = True) -> Iterator[tuple[int, list]]:
    """Yield (line number, fields) of a whitespace-separated file, skipping blank lines.

    With ``split_all=False`` the line splits at the first space only (``id rest of line``).
    """
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split() if split_all else line.split(" ", num_fields - 1)
            if len(parts) != num_fields:
                raise ValueError(
                    f"{path}:{lineno}: expected {num_fields} fields, got {len(parts)}: {line!r}"
                )
            yield lineno, parts


def require(root: Path, names: Iterable[str], dataset: str) -> None:
    """Raise FileNotFoundError naming the first missing file or folder of a layout."""
    for name in names:
        if not (root / name).exists():
            raise FileNotFoundError(
                f"{dataset}: {name} not found under {root}; expected the dataset's layout as "
                f"distributed (see the {dataset} docstring)"
            )


def find_root(root: str | Path, folder: str, marker: str, dataset: str) -> Path:
    """``root`` itself if it holds ``marker``, else ``root/folder`` if that does."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{dataset}: root folder {root} not found")
    if (root / marker).exists():
        return root
    if (root / folder / marker).exists():
        return root / folder
    if (root / folder).is_dir():
        return root / folder  # let the layout check name what is missing
    return root


def image_files(folder: Path, extensions: Sequence[str]) -> list[Path]:
    """Image files below ``folder``, recursively, sorted."""
    exts = tuple(e.lower() for e in extensions)
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        out.extend(Path(dirpath) / f for f in sorted(filenames) if f.lower().endswith(exts))
    return out
