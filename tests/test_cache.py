"""hmc.cache: the frozen/rest split, the cache key, resumable atomic writes, DDP, errors."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hmc.cache import (
    CachedFeatures,
    FeatureCacheError,
    cache_key,
    open_feature_cache,
    split_backbone,
    write_feature_cache,
)
from hmc.models import create_backbone


@pytest.fixture(scope="module")
def lite0():
    torch.manual_seed(0)
    return create_backbone("tf_efficientnet_lite0").eval()


@pytest.mark.parametrize(
    "name,freeze",
    [
        ("tf_efficientnet_lite0", 4),
        ("resnet10t", 0),
        ("resnet10t", 2),
        ("tf_efficientnet_lite0", 7),
    ],
)
def test_rest_of_frozen_equals_forward_features_and_shares_parameters(name, freeze):
    torch.manual_seed(0)
    backbone = create_backbone(name).eval()
    frozen, rest = split_backbone(backbone, freeze)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(rest(frozen(x)), backbone.forward_features(x), atol=1e-5)
    own = {id(p) for p in backbone.parameters()}
    assert {id(p) for p in rest.parameters()} <= own
    assert {id(p) for p in frozen.parameters()} <= own
    # Stages 0..freeze run only in `frozen`, the later ones only in `rest`.
    assert not ({id(p) for p in frozen.parameters()} & {id(p) for p in rest.parameters()})


def test_bad_stage_is_a_clear_error(lite0):
    with pytest.raises(ValueError, match=r"`freeze` in 0\.\.7"):
        split_backbone(lite0, 8)


def _images(tmp_path: Path, n: int = 6) -> list[Path]:
    files = []
    for i in range(n):
        f = tmp_path / f"img{i}.bin"
        f.write_bytes(bytes([i]) * 10)
        files.append(f)
    return files


def _image(i: int) -> torch.Tensor:
    return torch.full((3, 32, 32), float(i) / 10) + torch.arange(32.0) / 64


def test_key_changes_with_every_input(tmp_path, lite0):
    frozen, _ = split_backbone(lite0, 3)
    files = _images(tmp_path)
    key = cache_key(frozen, files, "eval-224", backbone_name="lite0", freeze=3, flip_view=False)
    same = cache_key(frozen, files, "eval-224", backbone_name="lite0", freeze=3, flip_view=False)
    assert key == same
    others = {
        cache_key(frozen, files, "eval-256", backbone_name="lite0", freeze=3, flip_view=False),
        cache_key(frozen, files, "eval-224", backbone_name="lite0", freeze=2, flip_view=False),
        cache_key(frozen, files, "eval-224", backbone_name="lite0", freeze=3, flip_view=True),
        cache_key(frozen, files[:-1], "eval-224", backbone_name="lite0", freeze=3, flip_view=False),
    }
    files[2].write_bytes(b"changed image bytes")  # same name, new size and mtime
    others.add(
        cache_key(frozen, files, "eval-224", backbone_name="lite0", freeze=3, flip_view=False)
    )
    with torch.no_grad():
        next(frozen.parameters()).add_(1.0)  # other weights
    others.add(
        cache_key(frozen, files, "eval-224", backbone_name="lite0", freeze=3, flip_view=False)
    )
    assert key not in others and len(others) == 6


def test_write_then_hit_without_recomputing(tmp_path, lite0):
    frozen, _ = split_backbone(lite0, 3)
    calls = []

    def images(i):
        calls.append(i)
        return _image(i)

    folder = write_feature_cache(
        tmp_path, "k1", frozen, images, 6, flip_view=True, batch_size=4, progress=False
    )
    assert folder == tmp_path / "k1" and not (tmp_path / "k1.partial").exists()
    array, meta = open_feature_cache(folder)
    with torch.no_grad():
        want = frozen(torch.stack([_image(i) for i in range(6)]))
        flipped = frozen(torch.stack([_image(i) for i in range(6)]).flip(-1))
    assert array.shape == (2, 6, *want.shape[1:]) and array.dtype == np.float16
    assert np.allclose(array[0], want.numpy(), atol=2e-3, rtol=2e-3)
    assert np.allclose(array[1], flipped.numpy(), atol=2e-3, rtol=2e-3)
    calls.clear()
    assert write_feature_cache(tmp_path, "k1", frozen, images, 6, progress=False) == folder
    assert calls == []  # a hit reads, it does not compute


def test_a_killed_pass_resumes_where_it_stopped(tmp_path, lite0):
    frozen, _ = split_backbone(lite0, 3)
    computed = []

    def dying(i):
        if len(computed) == 5:
            raise KeyboardInterrupt("killed")
        computed.append(i)
        return _image(i)

    with pytest.raises(KeyboardInterrupt):
        write_feature_cache(tmp_path, "k", frozen, dying, 9, batch_size=2, progress=False)
    assert (tmp_path / "k.partial").is_dir() and not (tmp_path / "k").exists()
    with pytest.raises(FeatureCacheError):  # a partial cache is never read
        open_feature_cache(tmp_path / "k.partial")
    computed.clear()

    def images(i):
        computed.append(i)
        return _image(i)

    folder = write_feature_cache(tmp_path, "k", frozen, images, 9, batch_size=2, progress=False)
    assert sorted(computed) == [4, 5, 6, 7, 8]  # 2 full batches were on disk before the kill
    fresh = write_feature_cache(tmp_path / "fresh", "k", frozen, _image, 9, progress=False)
    assert np.array_equal(open_feature_cache(folder)[0], open_feature_cache(fresh)[0])


def test_corrupt_file_names_it(tmp_path, lite0):
    frozen, _ = split_backbone(lite0, 3)
    folder = write_feature_cache(tmp_path, "k", frozen, _image, 4, progress=False)
    features = folder / "features.npy"
    with open(features, "r+b") as f:
        f.truncate(features.stat().st_size // 2)
    with pytest.raises(FeatureCacheError, match=r"features\.npy.* is corrupt"):
        CachedFeatures(folder, torch.arange(4))
    (folder / "meta.json").write_text("{not json")
    with pytest.raises(FeatureCacheError, match=r"meta\.json.* is corrupt"):
        open_feature_cache(folder)


def test_unwritable_path_is_a_clear_error(tmp_path, lite0):
    frozen, _ = split_backbone(lite0, 3)
    blocker = tmp_path / "file"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(FeatureCacheError, match="is not writable"):
        write_feature_cache(blocker / "cache", "k", frozen, _image, 4, progress=False)


def test_too_small_disk_fails_before_the_pass(tmp_path, lite0, monkeypatch):
    frozen, _ = split_backbone(lite0, 3)
    computed = []

    def images(i):
        computed.append(i)
        return _image(i)

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1000))
    with pytest.raises(FeatureCacheError, match=r"GiB are free"):
        write_feature_cache(tmp_path, "k", frozen, images, 50, progress=False)
    assert computed == [0]  # only the shape probe ran


def test_flip_view_is_random_per_read_and_reproducible(tmp_path, lite0):
    frozen, _ = split_backbone(lite0, 3)
    folder = write_feature_cache(tmp_path, "k", frozen, _image, 4, flip_view=True, progress=False)
    ds = CachedFeatures(folder, torch.arange(4))
    array, _ = open_feature_cache(folder)
    plain, flipped = (torch.from_numpy(array[v, 2].astype(np.float32)) for v in (0, 1))
    torch.manual_seed(0)
    reads = [ds[2][0] for _ in range(20)]
    kinds = [0 if torch.equal(r, plain) else 1 if torch.equal(r, flipped) else -1 for r in reads]
    assert set(kinds) == {0, 1}  # both views, nothing else
    torch.manual_seed(0)
    assert all(torch.equal(a, ds[2][0]) for a in reads)  # same seed, same views
    x, y = ds[3]
    assert x.dtype == torch.float32 and int(y) == 3
    with pytest.raises(FeatureCacheError, match="has 4 images, but the dataset has 3"):
        CachedFeatures(folder, torch.arange(3))


def _ddp_worker(rank: int, world: int, root: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        frozen, _ = split_backbone(create_backbone("resnet10t").eval(), 1)
        write_feature_cache(root, "k", frozen, _image, 7, batch_size=2, progress=False)
        array, _ = open_feature_cache(Path(root) / "k")  # every rank reads the whole cache
        assert array.shape[1] == 7
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_write_one_cache(tmp_path, lite0):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "ddp"), port), nprocs=2, join=True)
    torch.manual_seed(0)
    frozen, _ = split_backbone(create_backbone("resnet10t").eval(), 1)
    single = write_feature_cache(tmp_path / "one", "k", frozen, _image, 7, progress=False)
    # Same rows; batches differ between the runs, so float16 rounding may differ in the last bit.
    ddp = open_feature_cache(tmp_path / "ddp" / "k")[0].astype(np.float32)
    assert np.allclose(ddp, open_feature_cache(single)[0].astype(np.float32), atol=2e-3)
