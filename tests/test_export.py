"""`hmc export` and the torch-free ONNX predictor: round trips for every head on balanced and
ragged trees in both modes (raw outputs decoded in numpy, and decoding in the graph), the
metadata, parity with the PyTorch Predictor on image files, the errors, `on_bad_image`, and
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
from data_fixtures import make_cub  # noqa: E402

from hmc.cli import export_main, predict_main  # noqa: E402
from hmc.hierarchy import Hierarchy, load_hierarchy  # noqa: E402
from hmc.onnx_export import ExportError, export, transform_spec  # noqa: E402
from hmc.onnx_predictor import (  # noqa: E402
    DECODED_OUTPUTS,
    FORMAT,
    METADATA_KEY,
    RAW_OUTPUTS,
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
    **meta: object,
) -> Path:
    """A checkpoint in the format `hmc fit` writes (HMCModule.on_save_checkpoint), untrained;
    ``meta`` overrides entries of its hmc metadata (scores, probabilities, calibration)."""
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
    ckpt[METADATA_KEY].update(meta)
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
# timm's ImageNet evaluation transform (bicubic, shorter side, centre crop) at 48 px.
TIMM_48 = {
    "preset": "imagenet",
    "image_size": 48,
    "data_config": {"interpolation": "bicubic", "crop_pct": 0.9},
}
# id: (tree, head, the checkpoint's decoder and options, the exported one (None: the
# checkpoint's), exported with `hmc export` rather than hmc.export, decode_in_graph, the
# evaluation transform (None: "small" 32 px)). Every head x tree, every head in both modes,
# every decoder, the decoder override, the command line; the two TIMM_48 files also serve
# test_parity_on_a_cub_layout_fixture (one export per file for the whole module).
CASES = {
    "hrn-balanced-marginal": (balanced, "hrn", ("marginal", None), None, False, False, TIMM_48),
    "hrn-ragged-threshold": (
        ragged, "hrn", ("threshold", {"threshold": 0.3}), None, False, True, None
    ),
    "flat-balanced-argmax": (balanced, "flat", ("argmax", None), None, True, True, None),
    "flat-ragged-map": (ragged, "flat", ("argmax", None), ("map", None), False, False, None),
    "leaf-balanced-threshold": (
        balanced, "leaf", ("marginal", None), ("threshold", {"threshold": 0.2}), True, False,
        None,
    ),
    "leaf-ragged-marginal": (ragged, "leaf", ("marginal", None), None, False, True, TIMM_48),
}  # fmt: skip


def images_for(case: str, batch: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    """Random input tensors [batch, 3, S, S] at the crop size S of the case's transform."""
    size = (CASES[case][6] or {"image_size": 32})["image_size"]
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=g) * scale


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """id -> (checkpoint, onnx file, the torch Predictor it must match); one export each."""
    tmp = tmp_path_factory.mktemp("exported")
    out = {}
    for i, (case, spec) in enumerate(CASES.items()):
        tree, head, (dec, kw), override, cli, in_graph, transform = spec
        ckpt = write_checkpoint(
            tmp / f"{case}.ckpt",
            tree(),
            head=head,
            decoder=dec,
            decoder_kwargs=kw,
            transform=transform,
            seed=i,
        )
        path = tmp / f"{case}.onnx"
        dec, kw = override or (None, None)
        if cli:
            args = ["--ckpt_path", str(ckpt), "--output", str(path)]
            args += ["--decoder", dec, "--decoder_kwargs", json.dumps(kw)] if dec else []
            args += ["--decode_in_graph", "true"] if in_graph else []
            assert export_main(args) == 0
        else:
            got = export(ckpt, path, decoder=dec, decoder_kwargs=kw, decode_in_graph=in_graph)
            assert got == path
        out[case] = (ckpt, path, load_model(ckpt, decoder=dec, decoder_kwargs=kw))
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_round_trip_matches_the_torch_predictor(exported, case):
    _, path, torch_predictor = exported[case]
    onnx.checker.check_model(str(path), full_check=True)
    onnx_predictor = OnnxPredictor(path)
    assert onnx_predictor.decode_in_graph is CASES[case][5]
    assert onnx_predictor.decoder == torch_predictor.decoder
    assert onnx_predictor.decoder_kwargs == torch_predictor.decoder_kwargs
    for batch in (1, 5):  # the batch axis is dynamic
        x = images_for(case, batch, seed=batch, scale=2)
        ref = torch_predictor(x)
        got = onnx_predictor(x.numpy())
        assert got.nodes.shape == (batch, torch_predictor.hierarchy.num_levels)
        np.testing.assert_array_equal(got.nodes, ref.nodes.numpy())
        np.testing.assert_allclose(got.probs, ref.probs.numpy(), atol=1e-4)
        np.testing.assert_allclose(got.node_probs, ref.node_probs.numpy(), atol=1e-4)


def test_exported_threshold_stops_early_like_the_predictor(exported):
    # A threshold of 0.3 on an untrained HRN leaves some paths short: -1 columns in both.
    _, path, torch_predictor = exported["hrn-ragged-threshold"]
    x = images_for("hrn-ragged-threshold", 64, seed=0, scale=2)
    ref = torch_predictor(x).nodes.numpy()
    got = OnnxPredictor(path)(x.numpy()).nodes
    np.testing.assert_array_equal(got, ref)
    assert (ref == -1).any()


RAW_CASES = sorted(case for case, spec in CASES.items() if not spec[5])
DECODER_CHOICES = [
    ("argmax", None), ("marginal", None), ("map", None), ("paper", None),
    ("threshold", None), ("threshold", {"threshold": 0.8}),
]  # fmt: skip


@pytest.mark.parametrize("case", RAW_CASES)
def test_a_raw_file_decodes_with_any_decoder_at_predict_time(exported, case):
    _, path, torch_predictor = exported[case]
    onnx_predictor = OnnxPredictor(path)
    x = images_for(case, 16, seed=3, scale=2)
    for decoder, kwargs in DECODER_CHOICES:
        if decoder == "paper" and CASES[case][1] == "flat":
            with pytest.raises(ValueError, match="decoder 'paper' needs the head's leaf logits"):
                onnx_predictor(x.numpy(), decoder)
            continue
        ref = torch_predictor(x, decoder, kwargs)
        got = onnx_predictor(x.numpy(), decoder, kwargs)
        np.testing.assert_array_equal(got.nodes, ref.nodes.numpy(), err_msg=decoder)
        np.testing.assert_allclose(got.probs, ref.probs.numpy(), atol=1e-4)


def test_a_raw_file_carries_the_probability_model_and_calibration(exported, tmp_path):
    # One raw HRN file, its metadata rewritten to each probability model, scores setting and
    # a calibration, against a torch Predictor of the same model with the same settings.
    from hmc.calibration import Calibration
    from hmc.predict import Predictor

    _, path, torch_predictor = exported["hrn-balanced-marginal"]
    temperatures = {"node_scores": 0.6, "leaf_logits": 1.7}
    x = images_for("hrn-balanced-marginal", 32, seed=4, scale=2)
    for scores, probabilities, temps in [
        ("sigmoid", "states", temperatures), ("sigmoid", "leafhead", temperatures),
        ("logits", "product", temperatures), ("logits", "product", {}),
    ]:  # fmt: skip
        changed = _rewrite_metadata(
            path, tmp_path / "m.onnx", scores=scores, probabilities=probabilities,
            calibration={"temperatures": temps}, decoder="threshold",
            decoder_kwargs={"threshold": 0.4},
        )  # fmt: skip
        onnx_predictor = OnnxPredictor(changed)
        assert onnx_predictor.temperatures == temps
        ref_predictor = Predictor(
            torch_predictor.model, decoder="threshold", decoder_kwargs={"threshold": 0.4},
            scores=scores, probabilities=probabilities, calibration=Calibration(temps),
        )  # fmt: skip
        for decoder, kwargs in [(None, None), *DECODER_CHOICES]:
            ref = ref_predictor(x, decoder, kwargs)
            got = onnx_predictor(x.numpy(), decoder, kwargs)
            np.testing.assert_array_equal(got.nodes, ref.nodes.numpy(), err_msg=str(decoder))
            np.testing.assert_allclose(got.node_probs, ref.node_probs.numpy(), atol=1e-5)


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
    assert meta["probabilities"] == "product" and meta["calibration"] == {"temperatures": {}}
    assert meta["decode_in_graph"] is True and meta["outputs"] == list(DECODED_OUTPUTS)
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


@pytest.mark.parametrize(
    "case, outputs",
    [("hrn-balanced-marginal", RAW_OUTPUTS), ("flat-ragged-map", RAW_OUTPUTS[:1]),
     ("leaf-balanced-threshold", RAW_OUTPUTS)],
)  # fmt: skip
def test_a_raw_file_outputs_the_heads_raw_outputs(exported, case, outputs):
    _, path, torch_predictor = exported[case]
    model = onnx.load(str(path))
    meta = json.loads({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    assert meta["decode_in_graph"] is False and meta["outputs"] == list(outputs)
    assert [o.name for o in model.graph.output] == list(outputs)
    x = images_for(case, 3, seed=0)
    got = OnnxPredictor(path).run(x.numpy())
    with torch.no_grad():
        ref = torch_predictor.model(x)
    np.testing.assert_allclose(got["node_scores"], ref.node_scores.numpy(), atol=1e-4)
    if "leaf_logits" in outputs:
        np.testing.assert_allclose(got["leaf_logits"], ref.leaf_logits.numpy(), atol=1e-4)


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


MODES = pytest.mark.parametrize("in_graph", [False, True], ids=["raw", "decode_in_graph"])


@MODES
def test_parity_on_the_fashion_mnist_demo_model(tmp_path, in_graph):
    """The demo's model (resnet10t + HRN, 32 px "small" preset, shipped fashion-mnist tree) on
    grey 28 x 28 PNG files, as Fashion-MNIST images are."""
    h = load_hierarchy("fashion-mnist")
    ckpt = write_checkpoint(
        tmp_path / "demo.ckpt", h, backbone="resnet10t", head_kwargs=DEMO_HRN, decoder="marginal"
    )
    path = export(ckpt, tmp_path / "demo.onnx", decode_in_graph=in_graph)
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(12):
        pixels = rng.integers(0, 256, (7, 7), dtype=np.uint8)
        Image.fromarray(pixels).resize((28, 28), Image.NEAREST).save(folder / f"{i:02d}.png")
    torch_rows = load_model(ckpt).predict_files([folder], batch_size=5)
    onnx_rows = OnnxPredictor(path).predict_files([folder], batch_size=5)
    assert_same_rows(onnx_rows, torch_rows, h.level_names)


@pytest.mark.parametrize(
    "case", ["hrn-balanced-marginal", "leaf-ragged-marginal"], ids=["raw", "decode_in_graph"]
)
def test_parity_on_a_cub_layout_fixture(exported, tmp_path, case):
    """The CUB layout's species folders of JPEGs (written over by textured photos of varied
    sizes), timm's ImageNet evaluation transform (bicubic, shorter side, centre crop): an HRN
    raw file and a leaf head decoding in its graph, both exported with the checkpoint's
    marginal decoder and TIMM_48."""
    ckpt, path, torch_predictor = exported[case]
    assert CASES[case][6] == TIMM_48 and OnnxPredictor(path).decode_in_graph is CASES[case][5]
    info = make_cub(tmp_path / "cub", train_per_class=0, test_per_class=3)
    rng = np.random.default_rng(1)
    for f in sorted((info["base"] / "images").rglob("*.jpg")):
        h, w = int(rng.integers(40, 120)), int(rng.integers(40, 120))
        base = Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8))
        base.resize((w, h), Image.BICUBIC).save(f, quality=90)
    assert OnnxPredictor(path).transform["resize_mode"] == "shorter"
    images = info["base"] / "images"
    torch_rows = load_model(ckpt).predict_files([images], batch_size=4)
    onnx_rows = OnnxPredictor(path).predict_files([images], batch_size=4)
    assert_same_rows(onnx_rows, torch_rows, CASES[case][0]().level_names)


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


def test_both_predictors_list_images_and_write_rows_with_one_copy():
    import hmc.data
    import hmc.files
    import hmc.onnx_predictor as op
    import hmc.predict

    for module in (hmc.data, hmc.predict, op):
        assert module.list_images is hmc.files.list_images
    assert hmc.predict.write_predictions is op.write_predictions is hmc.files.write_predictions
    assert hmc.data.IMAGE_SUFFIXES is hmc.files.IMAGE_SUFFIXES


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
assert not p.decode_in_graph  # the rows below come from the numpy decoding
rows = p.predict_files([sys.argv[2]], batch_size=3, decoder=sys.argv[4])
op.write_predictions(rows, sys.argv[3])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "networkx", "timm"))
assert not heavy, heavy
print(len(rows))
"""


def test_onnx_predictor_runs_in_a_process_that_never_imports_torch(exported, tmp_path):
    _, path, torch_predictor = exported["hrn-balanced-marginal"]
    images = write_images(tmp_path / "img", 5, seed=4)
    out = tmp_path / "p.json"
    run = subprocess.run(
        [sys.executable, "-c", TORCH_FREE, str(path), str(images[0].parent), str(out), "map"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "5"
    rows = json.loads(out.read_text())
    ref = torch_predictor.predict_files([images[0].parent], decoder="map")
    assert_same_rows(rows, ref, balanced().level_names)


def test_python_m_onnx_predictor_writes_csv(exported, tmp_path):
    _, path, torch_predictor = exported["flat-ragged-map"]
    images = write_images(tmp_path / "img", 3, seed=5)
    (tmp_path / "img" / "broken.png").write_text("not an image")
    out = tmp_path / "p.csv"
    cmd = [sys.executable, "-m", "hmc.onnx_predictor", str(path), str(images[0].parent)]
    cmd += ["--output", str(out), "--threads", "1", "--decoder", "threshold"]
    cmd += ["--decoder_kwargs", '{"threshold": 0.4}', "--on_bad_image", "skip"]
    run = subprocess.run(cmd, cwd=ROOT, timeout=300, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "1 of 4 images could not be read" in run.stderr
    rows = list(csv.DictReader(out.open()))
    assert [r["image"] for r in rows] == [str(tmp_path / "img" / "broken.png")] + list(
        map(str, images)
    )
    assert rows[0]["error"].startswith("UnidentifiedImageError") and rows[0]["prediction"] == ""
    ref = torch_predictor.predict_files(
        images, decoder="threshold", decoder_kwargs={"threshold": 0.4}
    )
    assert [r["path"] for r in rows[1:]] == [r["path"] for r in ref]


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
    # The search goes down from the modules run directly (the backbone itself is never called,
    # only its forward_features: its members count as direct) into the stem, passes over
    # conv1.0 (it exports) and stops at conv1.1, whose only member exports. Early in the
    # forward pass, so the search exports a few small modules, not the whole backbone.
    ckpt = write_checkpoint(tmp_path / "m.ckpt", balanced(), head="flat")
    predictor = load_model(ckpt)
    stem = predictor.model.backbone.conv1
    stem[1] = _DataDependent(stem[1])
    with pytest.raises(ExportError, match=r"module 'backbone\.conv1\.1' \(_DataDependent\)"):
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
    newer = _rewrite_metadata(path, tmp_path / "v3.onnx", format="hmc-onnx/3", hmc_version="9.0")
    with pytest.raises(ModelMismatchError, match=r"'hmc-onnx/3'.*hmc 9\.0.*reads 'hmc-onnx/2'"):
        OnnxPredictor(newer)


def test_a_format_1_file_reads_as_decoded_in_the_graph(exported, tmp_path):
    # Format 1 files (before the raw mode) had no decode_in_graph and always decoded inside.
    _, path, torch_predictor = exported["flat-balanced-argmax"]
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            meta = json.loads(prop.value)
            for key in ("decode_in_graph", "outputs", "probabilities"):
                del meta[key]
            prop.value = json.dumps({**meta, "format": "hmc-onnx/1"})
    onnx.save(model, str(tmp_path / "v1.onnx"))
    old = OnnxPredictor(tmp_path / "v1.onnx")
    assert old.decode_in_graph and old.metadata["format"] == FORMAT
    x = images_for("flat-balanced-argmax", 4, seed=9)
    np.testing.assert_array_equal(old(x.numpy()).nodes, torch_predictor(x).nodes.numpy())


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


def test_another_decoder_than_the_one_in_the_graph_is_an_error(exported, tmp_path):
    _, path, _ = exported["flat-balanced-argmax"]
    images = write_images(tmp_path / "img", 1, seed=6)
    with pytest.raises(ValueError, match=r"without --decode_in_graph.*`hmc export --decoder map`"):
        OnnxPredictor(path).predict_files(images, decoder="map")
    _, path, _ = exported["hrn-ragged-threshold"]
    with pytest.raises(ValueError, match=r"'threshold' \{'threshold': 0.3\} inside its graph"):
        OnnxPredictor(path).predict_files(images, decoder_kwargs={"threshold": 0.5})
    OnnxPredictor(path).predict_files(images)  # its own: allowed
    OnnxPredictor(path, decoder="threshold").predict_files(images)  # load_model's rule
    with pytest.raises(ValueError, match="inside its graph"):
        OnnxPredictor(path, decoder="marginal")
    with pytest.raises(ValueError, match="Expected argument `decoder` to be one of"):
        OnnxPredictor(path).predict_files(images, decoder="nope")


# ------------------------------------------------------------------- bad images
@pytest.mark.parametrize("case", ["leaf-balanced-threshold", "hrn-ragged-threshold"])
def test_on_bad_image_behaves_as_the_torch_predictor(exported, tmp_path, case):
    _, path, torch_predictor = exported[case]
    folder = tmp_path / "img"
    write_images(folder, 4, seed=8)
    (folder / "img_001.png").write_bytes(b"\x89PNG truncated")  # in the middle of a batch
    (folder / "zz_empty.jpg").write_bytes(b"")  # alone in the last batch
    onnx_predictor = OnnxPredictor(path)
    for kw in ({}, {"on_bad_image": "raise"}):
        with pytest.raises(OSError, match=r"cannot read image '.*img_001\.png'"):
            onnx_predictor.predict_files([folder], batch_size=3, **kw)
    got = onnx_predictor.predict_files([folder], batch_size=3, on_bad_image="skip")
    ref = torch_predictor.predict_files([folder], batch_size=3, on_bad_image="skip")
    assert_same_rows(got, ref, CASES[case][0]().level_names)
    assert [r["image"] for r in got] == [str(p) for p in sorted(folder.iterdir())]
    bad = [r for r in got if r["error"]]
    assert [Path(r["image"]).name for r in bad] == ["img_001.png", "zz_empty.jpg"]
    assert all(r["prediction"] == "" and r["path"] == "" for r in bad)
    assert all(v is None for r in bad for k, v in r.items() if k.endswith("_prob"))
    assert all(r["error"] == "" for r in got if r not in bad)
    with pytest.raises(ValueError, match="`on_bad_image` to be one of"):
        onnx_predictor.predict_files([folder], on_bad_image="ignore")


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
    (images[0].parent / "bad.png").write_text("not an image")
    args = ["--model", str(path), str(images[0].parent), "--output", str(pred)]
    args += ["--decoder", "map", "--on_bad_image", "skip"]
    assert predict_main(args) == 0
    assert "hmc predict: 1 of 5 images could not be read" in capsys.readouterr().err
    rows = json.loads(pred.read_text())
    ref = torch_predictor.predict_files([images[0].parent], decoder="map", on_bad_image="skip")
    assert_same_rows(rows, ref, balanced().level_names)
    args = ["--model", str(path), str(images[0]), "--decoder_kwargs", "{threshold: 0.9}"]
    assert predict_main(args) == 0  # the file's threshold decoder with another threshold
    out = capsys.readouterr().out
    ref = torch_predictor.predict_files(images[:1], decoder_kwargs={"threshold": 0.9})
    assert next(csv.DictReader(out.splitlines()))["path"] == ref[0]["path"]
    assert predict_main(["--model", str(ckpt), str(images[0])]) == 1  # a .ckpt is not ONNX
    assert "export one with `hmc export`" in capsys.readouterr().err


def test_hmc_help_lists_export():
    from hmc.cli import DESCRIPTION

    assert "hmc export --ckpt_path" in DESCRIPTION and "--model model.onnx" in DESCRIPTION
