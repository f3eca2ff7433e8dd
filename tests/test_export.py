"""`hmc export` and the torch-free ONNX predictor: round trips for every head on balanced and
ragged trees, the metadata, parity with the PyTorch Predictor on image files, the errors, and
`hmc predict --model` / `python -m hmc.onnx_predictor`."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent / "data"))  # the dataset fixtures live there
from data_fixtures import bird_hierarchy, make_cub  # noqa: E402

from hmc.cli import export_main, predict_main  # noqa: E402
from hmc.hierarchy import Hierarchy, load_hierarchy  # noqa: E402
from hmc.onnx_export import ExportError, export, transform_spec  # noqa: E402
from hmc.onnx_predictor import (  # noqa: E402
    FORMAT,
    METADATA_KEY,
    ModelMismatchError,
    NotAnHmcModelError,
    OnnxPredictor,
    hierarchy_fingerprint,
    preprocess,
)
from hmc.predict import load_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMALL_HRN = {"mid_channels": 8, "block_channels": 8, "hidden": 16, "feature_dim": 8}
# The demo's model (configs/demo.yaml): resnet10t + a light HRN head, 32 px "small" preset.
DEMO_HRN = {"mid_channels": 64, "block_channels": 128, "hidden": 128, "feature_dim": 64}


def balanced() -> Hierarchy:
    return Hierarchy.from_paths(
        [("a", "a1", "a11"), ("a", "a1", "a12"), ("a", "a2", "a21"), ("b", "b1", "b11"),
         ("b", "b1", "b12"), ("b", "b2", "b21")],
        level_names=["order", "family", "species"],
    )  # fmt: skip


def ragged() -> Hierarchy:
    # a2 is a leaf at level 2, c a leaf at level 1.
    return Hierarchy.from_paths(
        [("a", "a1", "a11"), ("a", "a1", "a12"), ("a", "a2"), ("b", "b1", "b11"), ("c",)],
        level_names=["l1", "l2", "l3"],
        metadata={"name": "ragged-test"},
    )


def write_checkpoint(
    path: Path,
    hierarchy: Hierarchy,
    *,
    backbone: str = "test_resnet",
    head: str = "hrn",
    head_kwargs: dict | None = None,
    decoder: str = "argmax",
    decoder_kwargs: dict | None = None,
    transform: dict | None = None,
    seed: int = 0,
) -> Path:
    """A checkpoint in the format `hmc fit` writes (HMCModule.on_save_checkpoint), untrained."""
    from hmc.training import HMCModule

    torch.manual_seed(seed)
    module = HMCModule(
        hierarchy,
        backbone=backbone,
        head=head,
        head_kwargs=head_kwargs
        if head_kwargs is not None
        else (SMALL_HRN if head == "hrn" else {}),
        decoder=decoder,
        decoder_kwargs=decoder_kwargs,
    )
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    ckpt[METADATA_KEY]["transform"] = transform or {"preset": "small", "image_size": 32}
    torch.save(ckpt, path)
    return path


def write_images(folder: Path, n: int, seed: int, mode: str = "RGB") -> list[Path]:
    """Textured images of varied sizes (so resizing and cropping matter)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        h, w = int(rng.integers(24, 90)), int(rng.integers(24, 90))
        base = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.BICUBIC)
        noise = rng.integers(-40, 40, (h, w, 3))
        img = Image.fromarray(np.clip(np.asarray(img, int) + noise, 0, 255).astype(np.uint8))
        path = folder / f"img_{i:03d}.png"
        img.convert(mode).save(path)
        out.append(path)
    return out


# ------------------------------------------------------------------- round trips
# id: (tree, head, the checkpoint's decoder and options, the exported one (None: the
# checkpoint's), exported with `hmc export` rather than hmc.export). Every head x tree, every
# decoder, the decoder override and the command line.
CASES = {
    "hrn-balanced-marginal": (balanced, "hrn", ("marginal", None), None, False),
    "hrn-ragged-threshold": (ragged, "hrn", ("threshold", {"threshold": 0.3}), None, False),
    "flat-balanced-argmax": (balanced, "flat", ("argmax", None), None, True),
    "flat-ragged-map": (ragged, "flat", ("argmax", None), ("map", None), False),
    "leaf-balanced-threshold": (
        balanced, "leaf", ("marginal", None), ("threshold", {"threshold": 0.2}), True
    ),
    "leaf-ragged-marginal": (ragged, "leaf", ("marginal", None), None, False),
}  # fmt: skip


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """id -> (checkpoint, onnx file, the torch Predictor it must match); one export each."""
    tmp = tmp_path_factory.mktemp("exported")
    out = {}
    for i, (case, (tree, head, (dec, kw), override, cli)) in enumerate(CASES.items()):
        ckpt = write_checkpoint(
            tmp / f"{case}.ckpt", tree(), head=head, decoder=dec, decoder_kwargs=kw, seed=i
        )
        path = tmp / f"{case}.onnx"
        dec, kw = override or (None, None)
        if cli:
            args = ["--ckpt_path", str(ckpt), "--output", str(path)]
            args += ["--decoder", dec, "--decoder_kwargs", json.dumps(kw)] if dec else []
            assert export_main(args) == 0
        else:
            assert export(ckpt, path, decoder=dec, decoder_kwargs=kw) == path
        out[case] = (ckpt, path, load_model(ckpt, decoder=dec, decoder_kwargs=kw))
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_round_trip_matches_the_torch_predictor(exported, case):
    _, path, torch_predictor = exported[case]
    onnx.checker.check_model(str(path), full_check=True)
    onnx_predictor = OnnxPredictor(path)
    assert onnx_predictor.decoder == torch_predictor.decoder
    assert onnx_predictor.decoder_kwargs == torch_predictor.decoder_kwargs
    for batch in (1, 5):  # the batch axis is dynamic
        x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch)) * 2
        ref = torch_predictor(x)
        got = onnx_predictor(x.numpy())
        assert got.nodes.shape == (batch, torch_predictor.hierarchy.num_levels)
        np.testing.assert_array_equal(got.nodes, ref.nodes.numpy())
        np.testing.assert_allclose(got.probs, ref.probs.numpy(), atol=1e-4)
        np.testing.assert_allclose(got.node_probs, ref.node_probs.numpy(), atol=1e-4)


def test_exported_threshold_stops_early_like_the_predictor(exported):
    # A threshold of 0.3 on an untrained HRN leaves some paths short: -1 columns in both.
    _, path, torch_predictor = exported["hrn-ragged-threshold"]
    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2
    ref = torch_predictor(x).nodes.numpy()
    got = OnnxPredictor(path)(x.numpy()).nodes
    np.testing.assert_array_equal(got, ref)
    assert (ref == -1).any()


def test_metadata_holds_everything_needed_to_predict(exported):
    _, path, _ = exported["hrn-ragged-threshold"]
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    meta = json.loads(props[METADATA_KEY])
    h = ragged()
    assert meta["format"] == FORMAT
    assert meta["hmc_version"] == "0.1.0"
    assert Hierarchy.from_dict(meta["hierarchy"]) == h
    assert meta["fingerprint"] == h.fingerprint() == hierarchy_fingerprint(meta["hierarchy"])
    assert meta["decoder"] == "threshold" and meta["decoder_kwargs"] == {"threshold": 0.3}
    assert meta["score_kind"] == "states" and meta["scores"] == "logits"  # the HRN default
    assert meta["model_config"]["backbone"] == "test_resnet"
    assert meta["transform"] == {
        "config": {"preset": "small", "image_size": 32},
        "crop": 32,
        "resize": 32,
        "resize_mode": "square",
        "interpolation": "bilinear",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
    }
    assert [i.name for i in model.graph.input] == ["images"]
    assert [o.name for o in model.graph.output] == ["nodes", "probs", "node_probs"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 32, 32]


# ------------------------------------------------------------- parity on image files
def assert_same_rows(onnx_rows, torch_rows, level_names):
    assert len(onnx_rows) == len(torch_rows) > 0
    for got, ref in zip(onnx_rows, torch_rows, strict=True):
        assert list(got) == list(ref)  # same columns, same order
        for key, value in ref.items():
            if key.endswith("_prob") and value is not None:
                assert got[key] == pytest.approx(value, abs=1e-4), key
            else:
                assert got[key] == value, key
        assert all(got[level] == ref[level] for level in level_names)


def test_parity_on_the_fashion_mnist_demo_model(tmp_path):
    """The demo's model (resnet10t + HRN, 32 px "small" preset, shipped fashion-mnist tree) on
    grey 28 x 28 PNG files, as Fashion-MNIST images are."""
    h = load_hierarchy("fashion-mnist")
    ckpt = write_checkpoint(tmp_path / "demo.ckpt", h, backbone="resnet10t", head_kwargs=DEMO_HRN)
    path = export(ckpt, tmp_path / "demo.onnx")
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(12):
        pixels = rng.integers(0, 256, (7, 7), dtype=np.uint8)
        Image.fromarray(pixels).resize((28, 28), Image.NEAREST).save(folder / f"{i:02d}.png")
    torch_rows = load_model(ckpt).predict_files([folder], batch_size=5)
    onnx_rows = OnnxPredictor(path).predict_files([folder], batch_size=5)
    assert_same_rows(onnx_rows, torch_rows, h.level_names)


def test_parity_on_a_cub_layout_fixture(tmp_path):
    """The CUB layout's species folders of JPEGs (written over by textured photos of varied
    sizes), timm's ImageNet evaluation transform (bicubic, shorter side, centre crop)."""
    info = make_cub(tmp_path / "cub", train_per_class=0, test_per_class=3)
    rng = np.random.default_rng(1)
    for f in sorted((info["base"] / "images").rglob("*.jpg")):
        h, w = int(rng.integers(40, 120)), int(rng.integers(40, 120))
        base = Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8))
        base.resize((w, h), Image.BICUBIC).save(f, quality=90)
    transform = {
        "preset": "imagenet",
        "image_size": 48,
        "data_config": {"interpolation": "bicubic", "crop_pct": 0.9},
    }
    h = bird_hierarchy()
    ckpt = write_checkpoint(
        tmp_path / "birds.ckpt", h, head="hrn", decoder="marginal", transform=transform
    )
    path = export(ckpt, tmp_path / "birds.onnx")
    assert OnnxPredictor(path).transform["resize_mode"] == "shorter"
    images = info["base"] / "images"
    torch_rows = load_model(ckpt).predict_files([images], batch_size=4)
    onnx_rows = OnnxPredictor(path).predict_files([images], batch_size=4)
    assert_same_rows(onnx_rows, torch_rows, h.level_names)


@pytest.mark.parametrize(
    "config",
    [
        {"preset": "small", "image_size": 32},
        {"preset": "paper", "image_size": 40},
        {"preset": "imagenet", "image_size": 48},
        {"preset": "imagenet", "image_size": 36, "data_config": {"crop_pct": 1.0}},
        {
            "preset": "imagenet",
            "image_size": 40,
            "data_config": {"crop_mode": "squash", "interpolation": "bilinear"},
        },
    ],
    ids=lambda c: "-".join(str(v) for v in c.values()),
)
def test_preprocess_reproduces_the_torch_evaluation_transform(tmp_path, config):
    from hmc.data.transforms import build_transforms

    tf = build_transforms(**config, train=False)
    spec = transform_spec(config)
    for path in write_images(tmp_path, 6, seed=2) + write_images(tmp_path / "l", 2, 3, "L"):
        with Image.open(path) as img:
            ref = tf(img.convert("RGB")).numpy()
            got = preprocess(img, spec)
        assert got.dtype == np.float32 and got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-5)


def test_border_crop_mode_is_refused_at_export():
    config = {"preset": "imagenet", "image_size": 32, "data_config": {"crop_mode": "border"}}
    with pytest.raises(ExportError, match="crop_mode 'center' or 'squash'"):
        transform_spec(config)


@pytest.mark.parametrize("name", ["cub200", "cub200-4level", "fashion-mnist"])
def test_hierarchy_fingerprint_without_torch_equals_the_hierarchys(name):
    h = load_hierarchy(name)
    assert hierarchy_fingerprint(h.to_dict()) == h.fingerprint()


def test_the_torch_free_file_helpers_agree_with_hmcs(tmp_path, capsys):
    import hmc.data
    import hmc.onnx_predictor as op
    from hmc.predict import write_predictions

    assert op.IMAGE_SUFFIXES == hmc.data.IMAGE_SUFFIXES
    for rel in ["b/x.JPG", "a/y.png", "a/z.txt", "a/deep/w.webp", "c.jpeg"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    given = [tmp_path, tmp_path / "c.jpeg"]
    assert op.list_images(given) == hmc.data.list_images(given)
    rows = [{"image": "a.jpg", "order": "x", "order_prob": 0.5, "family": "", "family_prob": None}]
    for name in ("p.csv", "p.json"):
        write_predictions(rows, tmp_path / f"torch-{name}")
        op.write_predictions(rows, tmp_path / f"onnx-{name}")
        assert (tmp_path / f"onnx-{name}").read_text() == (tmp_path / f"torch-{name}").read_text()


# ---------------------------------------------------------------------- torch-free
TORCH_FREE = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):  # as if torch were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "timm", "networkx", "lightning",
                                  "pytorch_lightning"):
            raise ImportError(f"blocked: {name}")
sys.meta_path.insert(0, Block())
import hmc.onnx_predictor as op
p = op.OnnxPredictor(sys.argv[1])
rows = p.predict_files([sys.argv[2]], batch_size=3)
op.write_predictions(rows, sys.argv[3])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "networkx", "timm"))
assert not heavy, heavy
print(len(rows))
"""


def test_onnx_predictor_runs_in_a_process_that_never_imports_torch(exported, tmp_path):
    _, path, torch_predictor = exported["leaf-ragged-marginal"]
    images = write_images(tmp_path / "img", 5, seed=4)
    out = tmp_path / "p.json"
    run = subprocess.run(
        [sys.executable, "-c", TORCH_FREE, str(path), str(images[0].parent), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "5"
    rows = json.loads(out.read_text())
    assert_same_rows(rows, torch_predictor.predict_files([images[0].parent]), ragged().level_names)


def test_python_m_onnx_predictor_writes_csv(exported, tmp_path):
    _, path, _ = exported["flat-balanced-argmax"]
    images = write_images(tmp_path / "img", 3, seed=5)
    out = tmp_path / "p.csv"
    cmd = [sys.executable, "-m", "hmc.onnx_predictor", str(path), str(images[0].parent)]
    run = subprocess.run([*cmd, "--output", str(out), "--threads", "1"], cwd=ROOT, timeout=300)
    assert run.returncode == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 3 and rows[0]["image"] == str(images[0])


# --------------------------------------------------------------------------- errors
class _DataDependent(torch.nn.Module):
    """A layer whose branch depends on the data: torch.export cannot trace it."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        y = self.inner(x)
        return y if y.sum() > 0 else -y


def test_untraceable_model_names_the_module_that_failed(tmp_path):
    ckpt = write_checkpoint(tmp_path / "m.ckpt", balanced(), head="flat")
    predictor = load_model(ckpt)
    predictor.model.head.classifiers[1] = _DataDependent(predictor.model.head.classifiers[1])
    with pytest.raises(ExportError, match=r"module 'head\.classifiers\.1' \(_DataDependent\)"):
        export(predictor, tmp_path / "m.onnx")


def test_an_onnx_file_without_hmc_metadata_is_named(tmp_path):
    node = onnx.helper.make_node("Identity", ["images"], ["nodes"])
    value = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        [node],
        "plain",
        [value("images", onnx.TensorProto.FLOAT, [1, 3, 4, 4])],
        [value("nodes", onnx.TensorProto.FLOAT, [1, 3, 4, 4])],
    )
    path = tmp_path / "plain.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    with pytest.raises(NotAnHmcModelError, match="not an hmc model; export it with `hmc export`"):
        OnnxPredictor(path)
    (tmp_path / "junk.onnx").write_bytes(b"not onnx at all")
    with pytest.raises(NotAnHmcModelError, match="export one with `hmc export`"):
        OnnxPredictor(tmp_path / "junk.onnx")


def _rewrite_metadata(src: Path, dst: Path, **changes) -> Path:
    model = onnx.load(str(src))
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = json.dumps({**json.loads(prop.value), **changes})
    onnx.save(model, str(dst))
    return dst


def test_a_format_version_mismatch_is_named(exported, tmp_path):
    _, path, _ = exported["flat-balanced-argmax"]
    newer = _rewrite_metadata(path, tmp_path / "v2.onnx", format="hmc-onnx/2", hmc_version="9.0")
    with pytest.raises(ModelMismatchError, match=r"'hmc-onnx/2'.*hmc 9\.0.*reads 'hmc-onnx/1'"):
        OnnxPredictor(newer)


def test_a_hierarchy_mismatch_is_named(exported, tmp_path):
    _, path, _ = exported["hrn-ragged-threshold"]
    with pytest.raises(ModelMismatchError, match=r"'ragged-test'.*fingerprint.*hierarchy given"):
        OnnxPredictor(path, hierarchy=balanced())
    OnnxPredictor(path, hierarchy=ragged())  # its own hierarchy is accepted
    edited = ragged().to_dict()
    edited["nodes"] = edited["nodes"][::-1]
    bad = _rewrite_metadata(path, tmp_path / "edited.onnx", hierarchy=edited)
    with pytest.raises(ModelMismatchError, match="edited or corrupted"):
        OnnxPredictor(bad)


def test_asking_for_another_decoder_than_the_exported_one_is_an_error(exported, tmp_path):
    _, path, _ = exported["flat-balanced-argmax"]
    images = write_images(tmp_path / "img", 1, seed=6)
    with pytest.raises(ValueError, match=r"`hmc export --decoder map`"):
        OnnxPredictor(path).predict_files(images, decoder="map")


# ------------------------------------------------------------------------------ cli
def test_cli_predict_with_model(exported, tmp_path, capsys):
    ckpt, path, torch_predictor = exported["leaf-balanced-threshold"]  # written by `hmc export`
    images = write_images(tmp_path / "img", 4, seed=7)
    pred = tmp_path / "p.json"
    assert predict_main(["--model", str(path), str(images[0].parent), "--output", str(pred)]) == 0
    rows = json.loads(pred.read_text())
    assert_same_rows(rows, torch_predictor.predict_files(images), balanced().level_names)
    assert predict_main(["--model", str(path), str(images[0]), "--hierarchy", "cub200"]) == 1
    assert "fingerprint" in capsys.readouterr().err
    assert predict_main([str(images[0])]) == 2  # neither --ckpt_path nor --model
    assert predict_main(["--model", str(ckpt), str(images[0])]) == 1  # a .ckpt is not ONNX
    assert "export one with `hmc export`" in capsys.readouterr().err


def test_hmc_help_lists_export():
    from hmc.cli import DESCRIPTION

    assert "hmc export --ckpt_path" in DESCRIPTION and "--model model.onnx" in DESCRIPTION
