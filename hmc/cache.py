"""Cached frozen-stage features: run a backbone's frozen stages once per image, train the rest.

With a backbone frozen up to stage ``k`` (``build_model(..., freeze=k)``), the output of
stages ``0..k`` never changes during training. :func:`split_backbone` cuts a timm backbone
into a frozen part and the trainable rest (two views that share the model's parameters),
:func:`write_feature_cache` stores the frozen part's output for every image in a
memory-mapped float16 array, and :class:`CachedFeatures` serves it as a dataset. Later epochs,
and later runs with the same inputs, read the array instead of decoding JPEGs and running the
frozen stages again.

Layout of a cache folder ``<root>/<key>/`` (``key`` = :func:`cache_key`, a fingerprint of
everything that changes the content): ``features.npy`` [V, n, C, H, W] float16 (V views: the
evaluation transform, optionally its horizontal flip), ``meta.json``. While being written it
is ``<key>.partial/`` with a ``done`` mask per rank, so a killed pass resumes and a
half-written cache is never read. Plain PyTorch and numpy: no Lightning.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from hmc.models.backbone import backbone_stages

__all__ = [
    "CACHE_FORMAT",
    "CachedFeatures",
    "FeatureCacheError",
    "cache_key",
    "open_feature_cache",
    "split_backbone",
    "write_feature_cache",
]

CACHE_FORMAT = "hmc-feature-cache/1"
VIEWS = ("eval", "eval+hflip")


class FeatureCacheError(RuntimeError):
    """A cache folder that cannot be written, is too small, or holds a corrupt file."""


# ----------------------------------------------------------------------------- the split
class _View(nn.Module):
    """``backbone.forward_features`` with some modules replaced by ``nn.Identity``. Shares the
    backbone's parameters (a shallow copy of the module tree)."""

    def __init__(self, backbone: nn.Module, skipped: Sequence[str]) -> None:
        super().__init__()
        self.net = _without(backbone, skipped)

    def forward(self, x: Tensor) -> Tensor:
        return self.net.forward_features(x)


def _without(module: nn.Module, names: Sequence[str]) -> nn.Module:
    """A shallow copy of ``module`` in which the submodules ``names`` are ``nn.Identity``; every
    other submodule (and so every parameter) is the original object."""
    root = copy.copy(module)
    root._modules = dict(module._modules)
    copies: dict[str, nn.Module] = {"": root}
    for name in names:
        parent_path, _, attr = name.rpartition(".")
        parent = ""
        for part in parent_path.split(".") if parent_path else []:
            path = f"{parent}.{part}" if parent else part
            if path not in copies:
                original = copies[parent]._modules[part]
                clone = copy.copy(original)
                clone._modules = dict(original._modules)
                copies[parent]._modules[part] = clone
                copies[path] = clone
            parent = path
        copies[parent]._modules[attr] = nn.Identity()
    return root


def _stage_children(backbone: nn.Module) -> list[list[str]]:
    """Top-level (or ``blocks.i``-level) module names per stage. A parameterless top-level child
    (ResNet's ``act1``/``maxpool``) belongs to the stage of the child before it."""
    stages = backbone_stages(backbone)
    owner: dict[str, int] = {}
    for s, names in enumerate(stages):
        for n in names:
            parts = n.split(".")
            key = ".".join(parts[:2]) if parts[0] == "blocks" and len(parts) > 1 else parts[0]
            owner.setdefault(key, s)
    out: list[list[str]] = [[] for _ in stages]
    last = 0
    for name, child in backbone.named_children():
        if name == "blocks" and name not in owner:
            for sub, _ in child.named_children():
                key = f"blocks.{sub}"
                last = owner.get(key, last)
                out[last].append(key)
            continue
        if name in owner:
            last = owner[name]
        elif any(True for _ in child.parameters()):
            continue  # a head module (classifier) outside every stage
        out[last].append(name)
    return out


def split_backbone(backbone: nn.Module, freeze: int) -> tuple[nn.Module, nn.Module]:
    """``(frozen, rest)`` views of a timm backbone cut after stage ``freeze`` (0 = stem; see
    :func:`hmc.models.backbone_stages`): ``rest(frozen(x)) == backbone.forward_features(x)``.

    Both views share the backbone's parameters, so training ``rest`` trains the backbone and
    its checkpoint holds the full model. Checked on a small probe; a backbone whose
    ``forward_features`` is not a plain chain of its stages raises ``ValueError``.
    """
    children = _stage_children(backbone)
    if not (isinstance(freeze, int) and not isinstance(freeze, bool)):
        raise ValueError(f"Expected argument `freeze` to be a stage index, but got {freeze!r}")
    if not 0 <= freeze < len(children):
        raise ValueError(
            f"Expected argument `freeze` in 0..{len(children) - 1} (0 = stem), but got {freeze}"
        )
    frozen_names = [n for s in children[: freeze + 1] for n in s]
    rest_names = [n for s in children[freeze + 1 :] for n in s]
    frozen, rest = _View(backbone, rest_names), _View(backbone, frozen_names)
    _check_split(backbone, frozen, rest, freeze)
    return frozen, rest


def _check_split(backbone: nn.Module, frozen: nn.Module, rest: nn.Module, freeze: int) -> None:
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    size = cfg.get("input_size", (3, 224, 224))[1:] if cfg.get("fixed_input_size") else (64, 64)
    in_chans = getattr(backbone, "in_chans", 3)
    probe = torch.randn(2, in_chans, *size, generator=torch.Generator().manual_seed(0))
    was = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            whole = backbone.forward_features(probe)
            split = rest(frozen(probe))
    finally:
        backbone.train(was)
    if whole.shape != split.shape or not torch.allclose(whole, split, atol=1e-4, rtol=1e-4):
        name = type(backbone).__name__
        raise ValueError(
            f"backbone {name} cannot be cut after stage {freeze} for feature caching: its "
            "forward_features is not a plain chain of its stages (train without the cache)"
        )


# ------------------------------------------------------------------------------- the key
def _digest_module(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def cache_key(
    frozen: nn.Module,
    files: Sequence[str | os.PathLike],
    transform: Any,
    *,
    backbone_name: str,
    freeze: int,
    flip_view: bool,
) -> str:
    """Fingerprint of everything that changes a cache's content: the format version, the
    backbone name and the frozen part's weights, the frozen stages, the evaluation transform
    (its repr, which lists size, crop and mean/std), the views, and the image files in order
    with their sizes and modification times."""
    stats = []
    for f in files:
        st = os.stat(f)
        stats.append([os.fspath(f), st.st_size, st.st_mtime_ns])
    blob = json.dumps(
        {
            "format": CACHE_FORMAT,
            "backbone": backbone_name,
            "weights": _digest_module(frozen),
            "freeze": freeze,
            "transform": repr(transform),
            "views": VIEWS[: 2 if flip_view else 1],
            "files": stats,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


# ---------------------------------------------------------------------------- the writer
def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _check_writable(root: Path, need_bytes: int) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".hmc-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise FeatureCacheError(f"feature cache folder {str(root)!r} is not writable: {e}") from e
    free = shutil.disk_usage(root).free
    if need_bytes > free:
        raise FeatureCacheError(
            f"feature cache needs about {need_bytes / 2**30:.2f} GiB in {str(root)!r}, but only "
            f"{free / 2**30:.2f} GiB are free (choose another folder or free space)"
        )


class _Progress:
    """One line on stderr: images done, images/s and ETA (rank zero only)."""

    def __init__(self, total: int, done: int, enabled: bool) -> None:
        self.total, self.start_done, self.enabled = total, done, enabled
        self.t0 = time.perf_counter()
        self.last = 0.0

    def update(self, done: int, final: bool = False) -> None:
        now = time.perf_counter()
        if not self.enabled or (not final and now - self.last < 1.0):
            return
        self.last = now
        rate = (done - self.start_done) / max(now - self.t0, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        eta_s = "?" if not math.isfinite(eta) else time.strftime("%H:%M:%S", time.gmtime(eta))
        end = "\n" if final else "\r"
        print(
            f"caching features: {done}/{self.total} images, {rate:.1f} img/s, ETA {eta_s}",
            end=end,
            file=sys.stderr,
            flush=True,
        )


def write_feature_cache(
    root: str | os.PathLike,
    key: str,
    frozen: nn.Module,
    images: Callable[[int], Tensor],
    n: int,
    *,
    flip_view: bool = False,
    batch_size: int = 32,
    dtype: np.dtype = np.float16,
    progress: bool = True,
    loader_kwargs: dict[str, Any] | None = None,
) -> Path:
    """Run ``frozen`` over ``n`` images once and store the outputs; returns the cache folder.

    images: ``i -> [3, H, W]`` evaluation-transformed image ``i`` (e.g. a dataset's item 0).
    A complete cache ``<root>/<key>`` is reused as is. A ``<key>.partial`` left by a killed
    pass is continued. In DDP every rank computes its share of the images into the same
    memory-mapped file, and rank zero publishes it by an atomic rename.
    """
    root = Path(root)
    final = root / key
    if (final / "meta.json").is_file():
        return final
    rank, world = _rank_world()
    partial = root / f"{key}.partial"
    modes = [(m, m.training) for m in frozen.modules()]
    frozen.eval()
    try:
        views = 2 if flip_view else 1
        existing = partial / "features.npy"
        if existing.exists():  # resuming: the shape is in the file's header
            shape = tuple(_open_array(existing, "r", None, dtype).shape)
        else:
            with torch.no_grad():
                sample = frozen(images(0)[None])
            shape = (views, n, *sample.shape[1:])
        if rank == 0 and not existing.exists():
            _check_writable(root, int(np.prod(shape)) * np.dtype(dtype).itemsize)
            partial.mkdir(exist_ok=True)
            np.lib.format.open_memmap(existing, "w+", dtype=dtype, shape=shape)
        _barrier()
        array = _open_array(partial / "features.npy", "r+", shape, dtype)
        done_file = partial / f"done.rank{rank}-of-{world}.npy"
        done = np.load(done_file) if done_file.exists() else np.zeros(n, dtype=bool)
        mine = np.arange(rank, n, world)
        todo = mine[~done[mine]]
        count = len(mine) - len(todo)
        bar = _Progress(len(mine), count, progress and rank == 0)
        loader = torch.utils.data.DataLoader(
            _Indexed(images, todo), batch_size=batch_size, shuffle=False, **(loader_kwargs or {})
        )
        with torch.no_grad():
            for idx, x in loader:
                feats = frozen(x)
                rows = idx.numpy()
                array[0, rows] = feats.numpy().astype(dtype, copy=False)
                if flip_view:
                    array[1, rows] = frozen(x.flip(-1)).numpy().astype(dtype, copy=False)
                array.flush()
                done[rows] = True
                # after the rows are on disk: a resumed pass never skips one
                _save_atomic(done_file, done)
                count += len(rows)
                bar.update(count)
        bar.update(count, final=True)
        del array
        _barrier()
        if rank == 0:
            meta = {
                "format": CACHE_FORMAT,
                "key": key,
                "shape": list(shape),
                "dtype": np.dtype(dtype).name,
                "views": list(VIEWS[:views]),
            }
            (partial / "meta.json").write_text(json.dumps(meta, indent=1))
            for f in partial.glob("done.rank*.npy"):
                f.unlink()
            os.replace(partial, final)  # atomic: readers see a whole cache or none
        _barrier()
        return final
    finally:
        for m, training in modes:  # the view shares its modules with the model: restore them
            m.training = training


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, images: Callable[[int], Tensor], indices: np.ndarray) -> None:
        self.images, self.indices = images, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, Tensor]:
        j = int(self.indices[i])
        return j, self.images(j)


def _save_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def _open_array(path: Path, mode: str, shape: tuple[int, ...] | None, dtype: Any) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode=mode)
    except (ValueError, OSError, EOFError) as e:
        raise FeatureCacheError(
            f"feature cache file {str(path)!r} is corrupt ({e}); delete its folder to rebuild it"
        ) from e
    if shape is not None and (tuple(array.shape) != tuple(shape) or array.dtype != dtype):
        raise FeatureCacheError(
            f"feature cache file {str(path)!r} holds {array.dtype}{list(array.shape)}, expected "
            f"{np.dtype(dtype)}{list(shape)}; delete its folder to rebuild it"
        )
    return array


def open_feature_cache(folder: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """The read-only memory-mapped array [V, n, C, H, W] and the metadata of a complete cache."""
    folder = Path(folder)
    meta_file = folder / "meta.json"
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise FeatureCacheError(f"feature cache file {str(meta_file)!r} is corrupt: {e}") from e
    if meta.get("format") != CACHE_FORMAT:
        raise FeatureCacheError(
            f"{str(meta_file)!r}: cache format {meta.get('format')!r}, expected {CACHE_FORMAT!r}"
        )
    array = _open_array(folder / "features.npy", "r", tuple(meta["shape"]), np.dtype(meta["dtype"]))
    return array, meta


class CachedFeatures(torch.utils.data.Dataset):
    """``(features [C, H, W] float32, target)`` from a cache, in the order it was written.

    With two views (``flip_view``), each read takes the plain or the flipped view at random
    from torch's generator, which data-loader workers seed anew every epoch (and
    ``seed_everything(workers=True)`` makes reproducible).

    ``image_dataset``, when given, is the ``(image [3, H, W], target)`` dataset the features
    were computed from (its evaluation view), for code that needs the pictures themselves,
    such as the W&B sample table of :class:`hmc.training.LogPredictionSamples`.
    """

    on_bad_sample = "raise"  # a cache holds no undecodable image

    def __init__(
        self,
        folder: str | os.PathLike,
        targets: Tensor,
        image_dataset: torch.utils.data.Dataset | None = None,
    ) -> None:
        self.image_dataset = image_dataset
        self.array, self.meta = open_feature_cache(folder)
        if len(targets) != self.array.shape[1]:
            raise FeatureCacheError(
                f"feature cache {str(folder)!r} has {self.array.shape[1]} images, but the "
                f"dataset has {len(targets)}"
            )
        self.targets = targets
        self.views = self.array.shape[0]

    def __len__(self) -> int:
        return self.array.shape[1]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        view = int(torch.randint(self.views, ())) if self.views > 1 else 0
        feats = torch.from_numpy(np.asarray(self.array[view, i], dtype=np.float32))
        return feats, self.targets[i]
