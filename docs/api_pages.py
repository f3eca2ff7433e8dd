"""mkdocs hook: one API reference page per layer of ``hmc``, generated at build time.

Every public module (``hmc/x.py``) and subpackage (``hmc/x/``) gets ``api/x.md`` with mkdocstrings
directives, so a module that is added, renamed or removed needs no edit here and can never be
missing from the reference. A subpackage's page shows its docstring, the names it re-exports
from private ``_x`` modules (which have no section of their own), then each public submodule.
The pages go into the nav under "API reference", bottom layer first.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|data|exc|obj|const):`~?([^`]+)`")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hmc"
NAV_TITLE = "API reference"
# Bottom layer first: the order of CONTRIBUTING.md's layer table (the one that
# tests/test_layers.py's MAY_IMPORT mirrors); layers not listed follow alphabetically.
ORDER = re.findall(r"^\| `(\w+)` \|", (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8"), re.M)


def _summary(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return _ROLE.sub(r"`\1`", " ".join(doc.split("\n\n")[0].split()))


def _private_exports(init: Path) -> list[str]:
    """Names a package imports from its own private modules (``from hmc.x._y import a``)."""
    names = []
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] == "hmc" and any(p.startswith("_") for p in parts[1:]):
                names += [a.asname or a.name for a in node.names]
    return names


def _directive(target: str, **options: Any) -> str:
    lines = [f"::: {target}", "    options:", "      show_root_heading: false"]
    for key, value in options.items():
        if isinstance(value, list):
            lines.append(f"      {key}:")
            lines += [f"        - {v}" for v in value]
        else:
            lines.append(f"      {key}: {str(value).lower() if isinstance(value, bool) else value}")
    return "\n".join(lines) + "\n"


def _layers() -> dict[str, tuple[str, str]]:
    """layer name -> (page markdown, one-line summary)."""
    pages = {}
    for path in sorted(PACKAGE.iterdir()):
        name = path.stem
        if name.startswith("_"):
            continue
        if path.suffix == ".py":
            pages[name] = (f"# `hmc.{name}`\n\n" + _directive(f"hmc.{name}"), _summary(path))
        elif (path / "__init__.py").is_file():
            init = path / "__init__.py"
            parts = [f"# `hmc.{name}`\n", _directive(f"hmc.{name}", members=False)]
            private = _private_exports(init)
            parts += [_directive(f"hmc.{name}.{n}", show_root_heading=True) for n in private]
            for sub in sorted(path.glob("*.py")):
                if not sub.stem.startswith("_"):
                    parts.append(_directive(f"hmc.{name}.{sub.stem}", show_root_heading=True))
            pages[name] = ("\n".join(parts), _summary(init))
    order = [n for n in ORDER if n in pages] + sorted(set(pages) - set(ORDER))
    return {n: pages[n] for n in order}


def _index(layers: dict[str, tuple[str, str]]) -> str:
    rows = [f"| [`hmc`](hmc.md) | {_summary(PACKAGE / '__init__.py')} |"]
    rows += [f"| [`hmc.{n}`]({n}.md) | {summary} |" for n, (_, summary) in layers.items()]
    return (
        "# API reference\n\n"
        "Generated from the docstrings by mkdocstrings, one page per layer, bottom layer first\n"
        "(what each layer may import: [Contributing](../contributing.md#the-layers)).\n\n"
        "| module | what it holds |\n| --- | --- |\n" + "\n".join(rows) + "\n"
    )


def _pages() -> dict[str, str]:
    layers = _layers()
    face = "# `hmc`\n\n" + _directive("hmc", members=False)
    return {
        "api/index.md": _index(layers),
        "api/hmc.md": face,
        **{f"api/{n}.md": page for n, (page, _) in layers.items()},
    }


def on_config(config: Any) -> Any:
    entries = [{"Overview": "api/index.md"}, {"hmc": "api/hmc.md"}]
    entries += [{f"hmc.{n}": f"api/{n}.md"} for n in _layers()]
    nav = config["nav"] or []
    for i, item in enumerate(nav):
        if isinstance(item, dict) and NAV_TITLE in item:
            nav[i] = {NAV_TITLE: entries}
            break
    else:
        nav.append({NAV_TITLE: entries})
    config["nav"] = nav
    return config


def on_files(files: Files, config: Any) -> Files:
    for uri, content in _pages().items():
        files.append(File.generated(config, uri, content=content))
    return files
