"""The label tree: graph validation (``graph``), file formats (``io``), the
:class:`Hierarchy` class (``tree``) and the shipped trees (``shipped``).

This layer imports nothing else from hmc.
"""

from hmc.hierarchy.graph import VIRTUAL_ROOT, HierarchyError, HierarchyTensors, UnknownLabelError
from hmc.hierarchy.shipped import list_hierarchies, load_hierarchy
from hmc.hierarchy.tree import Hierarchy

__all__ = [
    "VIRTUAL_ROOT",
    "Hierarchy",
    "HierarchyError",
    "HierarchyTensors",
    "UnknownLabelError",
    "list_hierarchies",
    "load_hierarchy",
]
