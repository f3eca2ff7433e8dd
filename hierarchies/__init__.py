"""Shipped hierarchy files (package data ``hmc.hierarchies``).

Load one with ``hmc.load_hierarchy(name)``; see README.md here for the ``.tree`` format.
"""
