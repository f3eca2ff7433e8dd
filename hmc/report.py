"""A prediction gallery: one self-contained HTML file to look at what a model predicts.

:func:`write_report` takes the rows of :meth:`hmc.predict.Predictor.rows` (one per image file)
and writes a grid of thumbnails, each with its predicted path and a probability bar per level.
With labels, every card also says whether it is a mistake (the node predicted at the label's
level is not the label); mistakes show the true path, the predicted path and their distance in
the tree (edges between the label and the prediction at its level, or the deepest prediction
when the decoder stopped above it), and a checkbox filters the grid down to them (a few lines
of inline script; ``report.html#mistakes`` opens filtered). An optional per-level CAM strip
(images from :mod:`hmc.explanations`) goes under each card.

Images are embedded as JPEG data URIs by default (one file to send around, nothing fetched at
view time); ``embed=False`` references the files by paths relative to the report instead.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from hmc.hierarchy import Hierarchy

__all__ = ["THUMB_PX", "read_labels", "report_html", "write_report"]

THUMB_PX = 192  # longest side of a thumbnail: sharp on a grid card, ~10 kB as JPEG

_CSS = """
body{font:14px/1.35 system-ui,sans-serif;margin:0;background:#f4f4f2;color:#222}
header{padding:12px 20px;background:#fff;border-bottom:1px solid #ddd;position:sticky;top:0}
h1{font-size:18px;margin:0 0 4px}
.summary{color:#555;margin:0}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:12px;
padding:16px 20px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;margin:0}
.card.mistake{border-color:#d33;box-shadow:0 0 0 1px #d33}
.card>img{width:100%;height:auto;display:block;border-radius:4px}
.file{font-size:12px;color:#777;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.levels{list-style:none;padding:0;margin:6px 0 0}
.levels li{display:grid;grid-template-columns:1fr 60px 34px;gap:4px;align-items:center}
.levels .name{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.levels .lv{color:#888;font-size:11px;margin-right:4px}
.bar{background:#eee;height:8px;border-radius:4px;overflow:hidden}
.bar>span{display:block;height:100%;background:#3a7bd5}
.p{font-size:12px;text-align:right;color:#555}
.truth{margin-top:6px;font-size:12px}
.mistake .truth{color:#b00}
.cams{display:flex;gap:2px;margin-top:6px}
.cams figure{margin:0;flex:1;min-width:0}
.cams img{width:100%;display:block}
.cams figcaption{font-size:10px;color:#666;overflow:hidden;white-space:nowrap;
text-overflow:ellipsis}
body.mistakes-only .card:not(.mistake){display:none}
"""

# The whole script: the checkbox toggles a class on <body>, and CSS hides the correct cards;
# report.html#mistakes opens with the filter on (a link to share).
_SCRIPT = (
    "const box=document.getElementById('mistakes-only');"
    "const apply=()=>document.body.classList.toggle('mistakes-only',box.checked);"
    "box.addEventListener('change',apply);"
    "if(location.hash==='#mistakes'){box.checked=true;apply();}"
)


def _data_uri(image: Image.Image, size: int = THUMB_PX) -> str:
    img = image.convert("RGB")
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _image_src(path: str, base: Path | None, embed: bool) -> str:
    if not embed:
        rel = os.path.relpath(Path(path).resolve(), (base or Path.cwd()).resolve())
        return html.escape(Path(rel).as_posix(), quote=True)
    try:
        with Image.open(path) as img:
            return _data_uri(img)
    except OSError as err:
        raise OSError(f"cannot read image {path!r} for the report: {err}") from err


def read_labels(hierarchy: Hierarchy, csv_file: str | Path) -> dict[str, int]:
    """``{resolved image path: label column}`` from a ``path,label`` CSV/TSV read by
    :class:`hmc.data.CSVDataset` (labels at any depth, by id or unique display name; relative
    paths are relative to the CSV's folder); unlabelled rows are left out."""
    from hmc.data import CSVDataset

    ds = CSVDataset(hierarchy, csv_file)
    return {
        str(Path(p).resolve()): int(t)
        for p, t in zip(ds.paths.tolist(), ds.targets.tolist(), strict=True)
        if t >= 0
    }


def _column(hierarchy: Hierarchy, node: str | int | None) -> int:
    if node is None or node == "" or (isinstance(node, int) and node < 0):
        return -1
    return node if isinstance(node, int) else hierarchy.index(node)


def report_html(
    hierarchy: Hierarchy,
    rows: Sequence[Mapping[str, Any]],
    *,
    labels: Sequence[str | int | None] | None = None,
    cams: Sequence[Sequence[Image.Image]] | None = None,
    cam_titles: Sequence[Sequence[str]] | None = None,
    title: str = "hmc predictions",
    embed: bool = True,
    base: str | Path | None = None,
) -> str:
    """The report as an HTML string (see :func:`write_report`; ``base`` is the folder that
    relative image paths are relative to when ``embed=False``)."""
    h = hierarchy
    n = len(rows)
    for name, seq in (("labels", labels), ("cams", cams), ("cam_titles", cam_titles)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"Expected `{name}` to have one entry per row ({n}), got {len(seq)}")
    base = Path(base) if base is not None else None
    levels = h.level_names
    cards, mistakes, labelled = [], 0, 0
    for i, row in enumerate(rows):
        cols = [_column(h, row.get(level)) for level in levels]
        path_cols = [c for c in cols if c >= 0]
        items = []
        for level, c in zip(levels, cols, strict=True):
            p = float(row.get(f"{level}_prob") or 0.0) if c >= 0 else 0.0
            name = html.escape(h.name(c)) if c >= 0 else "—"
            items.append(
                f'<li><span class="name"><span class="lv">{html.escape(level)}</span>{name}'
                f'</span><span class="bar"><span style="width:{100 * p:.0f}%"></span></span>'
                f'<span class="p">{p:.2f}</span></li>'
            )
        classes, truth = "card", ""
        label = _column(h, labels[i]) if labels is not None else -1
        if label >= 0:
            labelled += 1
            at = cols[h.level(label) - 1]  # the prediction at the label's own level
            if at != label:
                mistakes += 1
                classes += " mistake"
                other = at if at >= 0 else (path_cols[-1] if path_cols else -1)
                dist = (
                    int(h.tree_distance(torch.tensor(label), torch.tensor(other)))
                    if other >= 0
                    else h.level(label)
                )
                true_path = " &gt; ".join(html.escape(h.name(a)) for a in h.ancestors(label))
                pred_path = " &gt; ".join(html.escape(h.name(c)) for c in path_cols) or "—"
                truth = (
                    f'<div class="truth">true: <b class="true-path">{true_path}</b><br>'
                    f'predicted: <span class="pred-path">{pred_path}</span><br>'
                    f'tree distance: <span class="distance">{dist}</span></div>'
                )
            else:
                truth = '<div class="truth">correct</div>'
        strip = ""
        if cams is not None and len(cams[i]):
            figs = []
            for k, img in enumerate(cams[i]):
                cap = html.escape(cam_titles[i][k]) if cam_titles is not None else levels[k]
                figs.append(
                    f'<figure><img class="cam" src="{_data_uri(img, 96)}" alt="CAM {cap}">'
                    f"<figcaption>{cap}</figcaption></figure>"
                )
            strip = f'<div class="cams">{"".join(figs)}</div>'
        image = str(row["image"])
        src = _image_src(image, base, embed)
        cards.append(
            f'<figure class="{classes}" data-image="{html.escape(image, quote=True)}">'
            f'<img src="{src}" alt="{html.escape(Path(image).name, quote=True)}">'
            f'<figcaption><div class="file">{html.escape(Path(image).name)}</div>'
            f'<ol class="levels">{"".join(items)}</ol>{truth}{strip}</figcaption></figure>'
        )
    summary = f"{n} images"
    control = ""
    if labels is not None:
        summary += f" · {labelled} labelled · {mistakes} mistakes"
        control = (
            '<label class="filter"><input type="checkbox" id="mistakes-only"> '
            "show mistakes only</label>"
        )
    hname = h.metadata.get("name")
    summary += f" · hierarchy {html.escape(str(hname))}" if hname else ""
    script = f"<script>{_SCRIPT}</script>" if control else ""
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f'<header><h1>{html.escape(title)}</h1><p class="summary">{summary}</p>{control}'
        f'</header><main class="grid">{"".join(cards)}</main>{script}</body></html>\n'
    )


def write_report(
    hierarchy: Hierarchy,
    rows: Sequence[Mapping[str, Any]],
    output: str | Path,
    *,
    labels: Sequence[str | int | None] | None = None,
    cams: Sequence[Sequence[Image.Image]] | None = None,
    cam_titles: Sequence[Sequence[str]] | None = None,
    title: str = "hmc predictions",
    embed: bool = True,
) -> Path:
    """Write the gallery of ``rows`` (from :meth:`hmc.predict.Predictor.rows`; ``row["image"]``
    is the image file) to ``output`` and return its path.

    Args:
        hierarchy: the model's hierarchy (names, paths, tree distances).
        rows: one dict per image with ``image`` and, per level, ``<level>`` (node id or "")
            and ``<level>_prob``.
        labels: optional true label per row: a node id or column at any depth, or None /
            "" for unlabelled.
        cams: optional per row a list of overlay images (one per level) for the CAM strip;
            cam_titles: their captions (default the level names).
        embed: embed thumbnails as data URIs (default) or link the files relatively.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    text = report_html(
        hierarchy,
        rows,
        labels=labels,
        cams=cams,
        cam_titles=cam_titles,
        title=title,
        embed=embed,
        base=output.parent,
    )
    output.write_text(text, encoding="utf-8")
    return output
