"""W&B hierarchy artifacts and the ``"wandb:"`` hierarchy references. Imports no Lightning.

- :func:`log_hierarchy_artifact` / :func:`load_hierarchy_artifact` store a
  :class:`~hmc.Hierarchy` as a W&B artifact of type ``"hierarchy"`` (one ``.tree`` file).
- :func:`resolve_hierarchy` is :func:`hmc.load_hierarchy` plus
  ``"wandb:entity/project/name:version"`` references; the training layer and the CLI use it.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

from hmc.hierarchy import Hierarchy, HierarchyError, load_hierarchy

__all__ = ["load_hierarchy_artifact", "log_hierarchy_artifact", "resolve_hierarchy"]

HIERARCHY_ARTIFACT_TYPE = "hierarchy"
HIERARCHY_FILE = "hierarchy.tree"
WANDB_PREFIX = "wandb:"


def resolve_hierarchy(name_or_path: str | Path | Hierarchy) -> Hierarchy:
    """:func:`hmc.load_hierarchy`, plus W&B artifact references ``"wandb:<ref>"``."""
    if isinstance(name_or_path, str) and name_or_path.startswith(WANDB_PREFIX):
        return load_hierarchy_artifact(name_or_path[len(WANDB_PREFIX) :])
    return load_hierarchy(name_or_path)


def _artifact_name(hierarchy: Hierarchy) -> str:
    label = str(hierarchy.metadata.get("name") or "hierarchy")
    label = re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-.") or "hierarchy"
    return f"{label}-{hierarchy.fingerprint()[:8]}"


def log_hierarchy_artifact(
    run: Any,
    hierarchy: Hierarchy,
    name: str | None = None,
    *,
    aliases: list[str] | None = None,
) -> Any:
    """Log ``hierarchy`` to the W&B ``run`` (default ``wandb.run``) as an artifact of type
    ``"hierarchy"`` holding one ``hierarchy.tree`` file. The default name is
    ``<hierarchy name>-<fingerprint[:8]>``, so the same tree maps to the same artifact.
    Works offline too (uploaded by ``wandb sync``). Returns the ``wandb.Artifact``."""
    import wandb

    run = run if run is not None else wandb.run
    if run is None:
        raise RuntimeError("log_hierarchy_artifact needs a W&B run: call wandb.init() first")
    name = name or _artifact_name(hierarchy)
    metadata = {
        "fingerprint": hierarchy.fingerprint(),
        "file": HIERARCHY_FILE,
        "level_names": list(hierarchy.level_names),
        "level_sizes": hierarchy.level_sizes(),
        "num_nodes": hierarchy.num_nodes,
        "num_leaves": len(hierarchy.leaves),
        **{k: v for k, v in hierarchy.metadata.items() if isinstance(v, (str, int, float, bool))},
    }
    artifact = wandb.Artifact(
        name, type=HIERARCHY_ARTIFACT_TYPE, description=repr(hierarchy), metadata=metadata
    )
    with tempfile.TemporaryDirectory(prefix="hmc-hierarchy-") as tmp:
        path = Path(tmp) / HIERARCHY_FILE
        hierarchy.save(path)
        # "mutable" copies the file into W&B's staging area now, so tmp may go away.
        artifact.add_file(str(path), name=HIERARCHY_FILE, policy="mutable")
    return run.log_artifact(artifact, aliases=aliases)


def load_hierarchy_artifact(ref: str, root: str | os.PathLike | None = None) -> Hierarchy:
    """The hierarchy stored in the W&B artifact ``ref`` (``entity/project/name:version``, or
    ``name:version`` inside an active run's project); ``:latest`` when no version is given.

    Uses the active online run (``run.use_artifact``, which records the lineage) or
    ``wandb.Api()``; the files go to ``root`` or W&B's artifact folder. Needs an API key and
    network; offline, download the artifact elsewhere (``wandb artifact get <ref>``) and pass
    the ``.tree`` file's path to :func:`hmc.load_hierarchy`.
    """
    import wandb

    ref = ref.strip()
    if not ref or ref.startswith(":") or ref.endswith(("/", ":")):
        raise HierarchyError(
            f"Expected a W&B artifact reference like 'entity/project/name:v0', but got {ref!r}"
        )
    if ":" not in ref.rsplit("/", 1)[-1]:
        ref += ":latest"
    run = wandb.run
    hint = f"Download it elsewhere with `wandb artifact get {ref}` and pass the .tree file's path"
    try:
        if run is not None and run.offline:
            raise HierarchyError(
                f"cannot fetch W&B artifact {ref!r}: the W&B run is offline. {hint}"
            )
        if run is not None and not run.disabled:
            artifact = run.use_artifact(ref, type=HIERARCHY_ARTIFACT_TYPE)
        # login(prompt=False) finds a configured key without asking for one or going online.
        elif wandb.login(prompt=False, verify=False):
            artifact = wandb.Api().artifact(ref, type=HIERARCHY_ARTIFACT_TYPE)
        else:
            raise HierarchyError(
                f"cannot fetch W&B artifact {ref!r}: no W&B API key, or W&B is set to offline "
                f"(set WANDB_API_KEY or run `wandb login`). {hint}"
            )
    except wandb.errors.Error as err:
        raise HierarchyError(f"cannot fetch W&B artifact {ref!r}: {err}") from err
    if getattr(artifact, "type", HIERARCHY_ARTIFACT_TYPE) != HIERARCHY_ARTIFACT_TYPE:
        raise HierarchyError(
            f"W&B artifact {ref!r} has type {artifact.type!r}; expected {HIERARCHY_ARTIFACT_TYPE!r}"
        )
    folder = Path(artifact.download(root=None if root is None else os.fspath(root)))
    metadata = dict(getattr(artifact, "metadata", None) or {})
    preferred = folder / str(metadata.get("file", HIERARCHY_FILE))
    trees = [preferred] if preferred.is_file() else sorted(folder.rglob("*.tree"))
    if len(trees) != 1:
        found = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        raise HierarchyError(
            f"W&B artifact {ref!r} (downloaded to {folder}) should hold one .tree file, but has "
            f"{found or 'no files'}"
        )
    hierarchy = Hierarchy.from_file(trees[0])
    expected = metadata.get("fingerprint")
    if expected and expected != hierarchy.fingerprint():
        raise HierarchyError(
            f"{trees[0]}: fingerprint {hierarchy.fingerprint()} does not match the artifact's "
            f"metadata ({expected}); the file was changed after logging"
        )
    return hierarchy
