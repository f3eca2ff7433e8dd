"""Users' own data: a CSV/TSV of ``path,label``, a nested folder tree, or a list of images."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from hmc.data._base import IGNORE, HierarchicalDataset, ImageFileDataset
from hmc.data._layout import IMAGE_SUFFIXES, LabelResolver, image_files, list_images
from hmc.hierarchy import Hierarchy, load_hierarchy

__all__ = ["CSVDataset", "HierarchyFolder", "ImagePaths"]


class CSVDataset(ImageFileDataset):
    """Images listed in a CSV or TSV file, one ``path,label`` row each.

    A label is any node id of ``hierarchy``, at any depth, or a display name that belongs to
    exactly one node, so mixed-granularity annotation works as is (``Parulidae`` and
    ``Yellow Warbler`` rows side by side). An empty label means unlabelled (target -100).

    The file may start with a header; if it names ``path_column`` and ``label_column`` those
    columns are used (other columns are ignored), else the first two columns are path and
    label. The delimiter is a tab for ``.tsv`` files and is sniffed otherwise. Relative paths
    are relative to ``root`` (default: the CSV's folder). A row that repeats an image with the
    same label is dropped (one warning counts them); with another label it is an error.

    As a :data:`hmc.data.DATASETS` entry (``csv``), the data root is one CSV/TSV file (the
    ``trainval`` pool) or a folder with ``train.csv`` and optionally ``val.csv`` and
    ``test.csv`` (or ``.tsv``).
    """

    def __init__(
        self,
        hierarchy: str | Path | Hierarchy,
        csv_file: str | Path,
        root: str | Path | None = None,
        *,
        path_column: str = "path",
        label_column: str = "label",
        transform: Callable | None = None,
        loader: Callable[[str], Image.Image] | None = None,
        on_bad_sample: str = "raise",
    ) -> None:
        h = load_hierarchy(hierarchy)
        self.csv_file = csv_file = Path(csv_file).expanduser()
        if not csv_file.is_file():
            raise FileNotFoundError(f"CSVDataset: {csv_file} not found")
        self.root = root = Path(root).expanduser() if root is not None else csv_file.parent
        if not root.is_dir():
            raise FileNotFoundError(f"CSVDataset: image root {root} not found")
        with open(csv_file, encoding="utf-8", newline="") as f:
            text = f.read()
        first = text.split("\n", 1)[0]
        delimiter = "\t" if csv_file.suffix.lower() == ".tsv" or "\t" in first else ","
        rows = list(csv.reader(text.splitlines(), delimiter=delimiter))
        header = [c.strip() for c in rows[0]] if rows else []
        start, path_i, label_i = 0, 0, 1
        if path_column in header and label_column in header:
            start, path_i, label_i = 1, header.index(path_column), header.index(label_column)
        elif path_column in header or label_column in header:
            missing = label_column if path_column in header else path_column
            raise ValueError(
                f"{csv_file}:1: header {header} has no column {missing!r}: name the columns "
                f"'{path_column}' and '{label_column}' (or set path_column/label_column)"
            )
        resolve = LabelResolver(h)
        paths, targets, origins = [], [], []
        for lineno, row in enumerate(rows[start:], start + 1):
            if not row or not any(c.strip() for c in row):
                continue
            if len(row) <= max(path_i, label_i):
                raise ValueError(
                    f"{csv_file}:{lineno}: expected a path and a label, got {row!r} (a header "
                    f"naming the columns '{path_column}' and '{label_column}' selects them)"
                )
            label = row[label_i].strip()
            origins.append(f"{csv_file}:{lineno}")
            try:
                targets.append(resolve(label, origins[-1]) if label else IGNORE)
            except KeyError:
                if lineno > 1 or Path(row[path_i].strip()).suffix.lower() in IMAGE_SUFFIXES:
                    raise
                raise ValueError(  # most likely a header naming other columns
                    f"{csv_file}:1: neither a known header nor a row: {row!r} names no column "
                    f"'{path_column}'/'{label_column}' and {label!r} is no node of the hierarchy; "
                    "call the columns path and label, or set path_column/label_column"
                ) from None
            paths.append(str(root / row[path_i].strip()))
        super().__init__(
            h,
            paths,
            torch.tensor(targets, dtype=torch.long),
            origins=origins,
            loader=loader,
            transform=transform,
            on_bad_sample=on_bad_sample,
        )

    @staticmethod
    def split_files(root: str | Path) -> dict[str, Path]:
        """{split: file} of a data root: a CSV/TSV file is ``trainval``; a folder has
        ``train`` (``trainval`` without a ``val`` file), ``val`` and ``test`` files."""
        root = Path(root).expanduser()
        if root.is_file():
            return {"trainval": root}
        files = {}
        for split in ("train", "val", "test"):
            for ext in (".csv", ".tsv"):
                if (root / f"{split}{ext}").is_file():
                    files[split] = root / f"{split}{ext}"
        if "train" not in files:
            raise FileNotFoundError(
                f"csv: train.csv not found under {root} (root is a CSV/TSV file, or a folder "
                f"with train.csv and optionally val.csv and test.csv)"
            )
        if "val" not in files:
            files["trainval"] = files.pop("train")
        return files

    @classmethod
    def has_val_split(cls, root: str | Path) -> bool:
        return "val" in cls.split_files(root)

    @classmethod
    def from_split(
        cls, root: str | Path, split: str, hierarchy: Hierarchy, **dataset_kwargs: Any
    ) -> HierarchicalDataset:
        return cls(
            hierarchy, _split_source(cls.split_files(root), split, root, "csv"), **dataset_kwargs
        )

    def extra_repr(self) -> str:
        return f"csv='{self.csv_file}'"


def _split_source(sources: dict[str, Path], split: str, root: str | Path, kind: str) -> Path:
    if split not in sources:
        expect = f"{split}.csv" if kind == "csv" else f"{split}/"
        raise FileNotFoundError(
            f"{kind}: no {split} split under {root} (expected {expect}; found {sorted(sources)})"
        )
    return sources[split]


class HierarchyFolder(ImageFileDataset):
    """A nested folder tree that is itself the hierarchy, like ``ImageFolder``:
    ``root/Passeriformes/Parulidae/Yellow_Warbler/img.jpg``.

    Every folder below ``root`` that holds an image somewhere inside is a node; its id is its
    path relative to ``root`` (``Passeriformes/Parulidae``; unique even when two folders share
    a name) and its display name is the folder name. An image is labelled at the folder it
    sits in, at any depth, so ``Passeriformes/Parulidae/x.jpg`` is a family-level label.
    Files directly in ``root`` are ignored.

    With ``hierarchy`` given, the tree is not read from the folders: each image's label is its
    folder's relative path if that is a node id, else its folder's name (node id or unique
    display name), so flat ``root/<class>/img.jpg`` folders work with any hierarchy.

    As a :data:`hmc.data.DATASETS` entry (``folder``), the data root is one tree (the
    ``trainval`` pool) or a folder holding ``train/`` and optionally ``val/`` and ``test/``.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        hierarchy: str | Path | Hierarchy | None = None,
        level_names: Sequence[str] | None = None,
        suffixes: Sequence[str] = IMAGE_SUFFIXES,
        transform: Callable | None = None,
        loader: Callable[[str], Image.Image] | None = None,
        on_bad_sample: str = "raise",
    ) -> None:
        self.root = root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"HierarchyFolder: root folder {root} not found")
        files = [p for p in image_files(root, suffixes) if p.parent != root]
        if not files:
            raise FileNotFoundError(
                f"HierarchyFolder: no images ({', '.join(suffixes)}) in the folders under {root}"
            )
        if hierarchy is None:
            h = self.scan(root, level_names=level_names, suffixes=suffixes, files=files)
        else:
            h = load_hierarchy(hierarchy)
        resolve = LabelResolver(h)
        targets = []
        for p in files:
            rel = p.parent.relative_to(root).as_posix()
            targets.append(h.index(rel) if rel in h else resolve(p.parent.name, f"{p}"))
        super().__init__(
            h,
            [str(p) for p in files],
            torch.tensor(targets, dtype=torch.long),
            loader=loader,
            transform=transform,
            on_bad_sample=on_bad_sample,
        )

    @staticmethod
    def scan(
        root: str | Path,
        *,
        level_names: Sequence[str] | None = None,
        suffixes: Sequence[str] = IMAGE_SUFFIXES,
        files: Sequence[Path] | None = None,
    ) -> Hierarchy:
        """The hierarchy of the folders under ``root`` that contain images (at any depth)."""
        root = Path(root).expanduser()
        if files is None:
            files = [p for p in image_files(root, suffixes) if p.parent != root]
        # One top-to-folder path per image folder; a node's id is its path relative to root.
        rows = {}
        for p in files:
            parts = p.parent.relative_to(root).parts
            rows[parts] = ["/".join(parts[: d + 1]) for d in range(len(parts))]
        return Hierarchy.from_paths(
            rows.values(),
            names={node: node.rpartition("/")[2] for row in rows.values() for node in row},
            level_names=level_names,
            metadata={"name": root.name, "source": f"folder tree {root}"},
        )

    @staticmethod
    def split_folders(root: str | Path) -> dict[str, Path]:
        """{split: tree} of a data root: ``train/`` (``trainval`` without ``val/``), ``val/``
        and ``test/`` when root holds only those, else {"trainval": root}."""
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"folder: root folder {root} not found")
        subdirs = {p.name for p in root.iterdir() if p.is_dir()}
        if not ("train" in subdirs and subdirs <= {"train", "val", "test"}):
            return {"trainval": root}
        folders = {s: root / s for s in subdirs}
        if "val" not in folders:
            folders["trainval"] = folders.pop("train")
        return folders

    @classmethod
    def default_hierarchy(cls, root: str | Path) -> Hierarchy:
        """The tree of the training folders (see :meth:`scan`)."""
        folders = cls.split_folders(root)
        return cls.scan(folders.get("train", folders.get("trainval")))

    @classmethod
    def has_val_split(cls, root: str | Path) -> bool:
        return "val" in cls.split_folders(root)

    @classmethod
    def from_split(
        cls, root: str | Path, split: str, hierarchy: Hierarchy, **dataset_kwargs: Any
    ) -> HierarchicalDataset:
        folder = _split_source(cls.split_folders(root), split, root, "folder")
        return cls(folder, hierarchy=hierarchy, **dataset_kwargs)


class ImagePaths(ImageFileDataset):
    """Images to predict: files, and folders searched recursively (:func:`list_images`, as
    ``hmc predict`` does), in the given order. Targets are all -100 (unlabelled); ``.paths``
    maps predictions back to files, one row per file found (a file given twice stays twice).
    """

    _unique_paths = False  # predictions stay aligned with the inputs

    def __init__(
        self,
        hierarchy: str | Path | Hierarchy,
        paths: Sequence[str | Path] | str | Path,
        *,
        suffixes: Sequence[str] = IMAGE_SUFFIXES,
        transform: Callable | None = None,
        loader: Callable[[str], Image.Image] | None = None,
        on_bad_sample: str = "raise",
    ) -> None:
        found = [str(p) for p in list_images(paths, suffixes)]
        super().__init__(
            load_hierarchy(hierarchy),
            found,
            torch.full((len(found),), IGNORE, dtype=torch.long),
            loader=loader,
            transform=transform,
            on_bad_sample=on_bad_sample,
        )
