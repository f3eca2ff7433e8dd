"""Shipped hierarchies by name, and ``load_hierarchy``."""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path

from hmc.hierarchy import Hierarchy, HierarchyError

__all__ = ["list_hierarchies", "load_hierarchy"]


def _shipped_dir():
    return resources.files("hmc.hierarchies")


def list_hierarchies() -> list[str]:
    """Names of the hierarchies shipped in ``hierarchies/``."""
    return sorted(
        p.name[: -len(".tree")] for p in _shipped_dir().iterdir() if p.name.endswith(".tree")
    )


def load_hierarchy(name_or_path: str | Path | Hierarchy) -> Hierarchy:
    """A shipped hierarchy by name (``"cub200"``), a file or NABirds folder by path, or a W&B
    artifact (``"wandb:entity/project/name:version"``)."""
    if isinstance(name_or_path, Hierarchy):
        return name_or_path
    text = str(name_or_path)
    if text.startswith("wandb:"):
        from hmc.wandb_utils import load_hierarchy_artifact

        return load_hierarchy_artifact(text[len("wandb:") :])
    path = Path(text).expanduser()
    if path.exists():
        return Hierarchy.from_file(path)
    shipped = _shipped_dir() / f"{text}.tree"
    if shipped.is_file():
        from hmc._hierarchy_io import parse_tree

        return parse_tree(shipped.read_text(encoding="utf-8"), source=f"hierarchies/{text}.tree")
    names = list_hierarchies()
    close = difflib.get_close_matches(text, names, n=3)
    hint = f"; did you mean {close}?" if close else ""
    raise HierarchyError(
        f"no shipped hierarchy named {text!r} and no such file{hint} (shipped: {', '.join(names)})"
    )
