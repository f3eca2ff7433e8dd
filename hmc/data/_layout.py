"""Reading datasets' own annotation files: label lookup, text tables, duplicate rows, layout
checks, image listing. Every error names the file (and line) at fault."""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Iterable, Iterator, Sequence
from pathlib import Path

from hmc.files import IMAGE_SUFFIXES, image_files, list_images  # re-exported: one copy
from hmc.hierarchy import Hierarchy, UnknownLabelError

__all__ = [
    "IMAGE_SUFFIXES",
    "DuplicateRowsWarning",
    "LabelResolver",
    "find_root",
    "image_files",
    "list_images",
    "read_rows",
    "require",
    "unique_rows",
]


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


# --------------------------------------------------------------- duplicate rows
class DuplicateRowsWarning(UserWarning):
    """Rows that list an image already listed with the same label; they are dropped."""


def unique_rows(
    keys: Sequence[str], values: Sequence[Hashable], origins: Sequence[str], what: str = "label"
) -> list[int]:
    """Indices of the rows to keep: the first row of each key (an image).

    A key repeated with an equal value is a duplicate: dropped, and all of them counted in
    one :class:`DuplicateRowsWarning`. A key repeated with another value raises ValueError
    naming both rows' ``origins`` (``file:line``), the key and the two values (``what``).
    """
    first: dict[str, int] = {}
    keep: list[int] = []
    dropped: list[int] = []
    for i, key in enumerate(keys):
        j = first.setdefault(key, i)
        if j == i:
            keep.append(i)
        elif values[j] == values[i]:
            dropped.append(i)
        else:
            raise ValueError(
                f"{origins[j]} and {origins[i]}: image {key} is listed twice, with {what} "
                f"{values[j]!r} and {values[i]!r}; keep one row"
            )
    if dropped:
        i = dropped[0]
        warnings.warn(
            f"dropped {len(dropped)} duplicate row(s) that repeat an image with the same "
            f"{what}, e.g. {origins[i]} repeats {origins[first[keys[i]]]} (image {keys[i]})",
            DuplicateRowsWarning,
            stacklevel=3,
        )
    return keep
