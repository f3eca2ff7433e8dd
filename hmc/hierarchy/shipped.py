"""Shipped hierarchies by name, and ``load_hierarchy``."""

from __future__ import annotations

import difflib
import functools
from importlib import resources
from pathlib import Path

from hmc.hierarchy.graph import HierarchyError
from hmc.hierarchy.tree import Hierarchy

__all__ = ["list_hierarchies", "load_hierarchy"]


def _shipped_dir():
    # The top-level hierarchies/ folder is installed as the package hmc.hierarchies.
    return resources.files("hmc.hierarchies")


def list_hierarchies() -> list[str]:
    """Names of the hierarchies shipped in ``hierarchies/`` (``hmc.hierarchies``)."""
    return sorted(
        p.name[: -len(".tree")] for p in _shipped_dir().iterdir() if p.name.endswith(".tree")
    )


@functools.cache
def _load_shipped(name: str) -> Hierarchy:
    # Hierarchies are immutable, so one parsed copy (and its tensor cache) can be shared.
    text = (_shipped_dir() / f"{name}.tree").read_text(encoding="utf-8")
    return Hierarchy.from_tree_text(text, source=f"hierarchies/{name}.tree")


def load_hierarchy(name_or_path: str | Path | Hierarchy) -> Hierarchy:
    """A shipped hierarchy by name (``"cub200"``), else a file or NABirds folder by path.

    W&B artifacts (``"wandb:entity/project/name:version"``) resolve in the W&B layer:
    :func:`hmc.training.artifacts.resolve_hierarchy`.

    A shipped name wins over a same-named file in the working directory (so a data folder
    called ``cub200`` does not shadow it); write ``./cub200`` to mean the path."""
    if isinstance(name_or_path, Hierarchy):
        return name_or_path
    if not isinstance(name_or_path, (str, Path)):
        raise HierarchyError(
            "Expected argument `name_or_path` to be a shipped name, a path or a Hierarchy, "
            f"got {type(name_or_path).__name__}"
        )
    text = str(name_or_path)
    if text.startswith("wandb:"):
        raise HierarchyError(
            f"{text!r} is a W&B artifact; resolve it with "
            "hmc.training.artifacts.resolve_hierarchy (HMCModule, HMCDataModule and the CLI do)"
        )
    names = list_hierarchies()
    if isinstance(name_or_path, str) and text in names:
        return _load_shipped(text)
    path = Path(text).expanduser()
    if path.exists():
        return Hierarchy.from_file(path)
    close = difflib.get_close_matches(text, names, n=3)
    hint = f"; did you mean {close}?" if close else ""
    raise HierarchyError(
        f"Expected a shipped hierarchy name or an existing path, got {text!r}{hint} "
        f"(shipped: {', '.join(names)})"
    )
