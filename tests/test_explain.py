"""hmc.explain (in hmc.explanations) and ``hmc explain``: per-level class-activation maps on
tiny real models (random weights for shapes and errors; a model trained in the test for maps
that must differ)."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from cam_fixtures import fit_checkpoint, patch_image
from PIL import Image

from hmc.cli import explain_main
from hmc.decoding import decode, node_probabilities
from hmc.explanations import (
    METHODS,
    PANEL_PX,
    explain,
    find_target_layer,
    render_explanation,
    to_display,
)
from hmc.hierarchy import Hierarchy, UnknownLabelError
from hmc.models import build_model
from hmc.predict import load_model

HRN_TINY = {"mid_channels": 8, "block_channels": 16, "hidden": 16, "feature_dim": 8}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def toy() -> Hierarchy:
    rows = [("a", "a1"), ("a", "a2"), ("b", "b1"), ("b", "b2"), ("b", "b3")]
    return Hierarchy.from_paths(rows, level_names=["coarse", "fine"], metadata={"name": "toy"})


def tiny(head: str = "hrn", backbone: str = "test_efficientnet"):
    torch.manual_seed(0)
    kwargs = HRN_TINY if head == "hrn" else None
    return build_model(toy(), backbone, head, head_kwargs=kwargs).eval()


@pytest.mark.parametrize("head", ["hrn", "flat", "leaf"])
@pytest.mark.parametrize("target", ["score", "probability"])
def test_maps_have_the_image_size_and_values_in_the_unit_range(head, target):
    model = tiny(head)
    x = torch.randn(3, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    e = explain(model, x, target=target)
    assert e.maps.shape == (3, 2, 64, 96) and e.levels == (1, 2)
    assert e.maps.min() >= 0 and e.maps.max() <= 1 and e.maps.amax((2, 3)).gt(0).any()
    with torch.no_grad():
        out = model(x)
    ref = decode(model.hierarchy, out, "argmax", score_kind=model.score_kind)
    assert torch.equal(e.nodes, ref.nodes)
    torch.testing.assert_close(e.probs, ref.probs)


def test_hmc_explain_is_the_function():
    import hmc
    import hmc.explanations

    assert hmc.explain is explain is hmc.explanations.explain


def test_one_forward_pass_serves_every_level():
    model = tiny("hrn")
    calls = []
    model.head.register_forward_hook(lambda *_: calls.append(1))
    explain(model, torch.randn(2, 3, 64, 64))
    assert len(calls) == 1


def test_a_frozen_backbone_still_has_maps():
    torch.manual_seed(0)
    model = build_model(toy(), "test_efficientnet", "flat", freeze="all").eval()
    assert not any(p.requires_grad for p in model.backbone.parameters())
    e = explain(model, torch.randn(2, 3, 64, 64))
    assert e.maps.amax((2, 3)).gt(0).any()  # gradients reach the layer (ReLU may zero some)


def test_levels_by_name_or_number_and_a_given_node():
    model = tiny("flat")
    h = model.hierarchy
    x = torch.randn(2, 3, 64, 64)
    fine = explain(model, x, levels=["fine"])
    assert fine.levels == (2,) and fine.maps.shape == (2, 1, 64, 64)
    assert torch.equal(fine.maps, explain(model, x, levels=[2]).maps)
    b2 = explain(model, x, node="b2")
    assert b2.levels == (2,) and b2.nodes.flatten().tolist() == [h.index("b2")] * 2
    with torch.no_grad():
        p = node_probabilities(h, model(x), score_kind="level_logits")
    torch.testing.assert_close(b2.probs[:, 0], p[:, h.index("b2")])


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match="method") as err:
        explain(tiny(), torch.randn(1, 3, 64, 64), method="gradcam2")
    assert all(m in str(err.value) for m in METHODS)


def test_unknown_node_says_did_you_mean():
    with pytest.raises(UnknownLabelError, match=r"did you mean \['b2'"):
        explain(tiny(), torch.randn(1, 3, 64, 64), node="b22")


def test_target_layer_is_the_last_stage_and_can_be_overridden():
    assert find_target_layer(tiny(backbone="test_efficientnet")) == "backbone.bn2"
    assert find_target_layer(tiny(backbone="test_resnet")) == "backbone.layer4"
    model = tiny()
    x = torch.randn(1, 3, 64, 64)
    early = explain(model, x, target_layer="blocks.2")  # relative to the backbone works too
    assert early.maps.shape == (1, 2, 64, 64)
    assert not torch.allclose(early.maps, explain(model, x).maps)
    with pytest.raises(ValueError, match="did you mean"):
        explain(model, x, target_layer="backbone.blokcs.2")


def test_a_backbone_without_a_target_layer_says_how_to_pass_one():
    model = tiny()
    backbone = model.backbone
    # The feature map comes out of a functional op, so no module returns it.
    plain = type(backbone).forward_features
    backbone.forward_features = types.MethodType(lambda self, x: plain(self, x) * 1.0, backbone)
    with pytest.raises(ValueError, match=r"target_layer=.*'backbone\.bn2'"):
        explain(model, torch.randn(1, 3, 64, 64))
    assert explain(model, torch.randn(1, 3, 64, 64), target_layer="backbone.bn2").maps.ndim == 4


def test_the_picture_has_the_photo_and_one_titled_panel_per_level():
    model = tiny()
    x = torch.randn(2, 3, 64, 64)
    e = explain(model, x)
    shown = to_display(x)
    assert shown[0].size == (64, 64)
    pic = render_explanation(model.hierarchy, shown[0], e.maps[0], e.nodes[0], e.probs[0], e.levels)
    assert pic.width == 3 * (PANEL_PX + 4) + 4 and pic.height > PANEL_PX


# ------------------------------------------------------------------ trained model + CLI
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return fit_checkpoint(tmp_path_factory.mktemp("explain"), steps=10)


def test_maps_of_two_nodes_of_one_level_differ_on_a_trained_model(trained):
    ckpt, _ = trained
    predictor = load_model(ckpt)
    rng = np.random.default_rng(5)
    photos = [patch_image("left", "red", rng), patch_image("right", "green", rng)]
    x = torch.stack([predictor.transform(p) for p in photos])
    left = explain(predictor, x, node="left")
    right = explain(predictor, x, node="right")
    assert left.levels == right.levels == (1,)
    assert (left.maps - right.maps).abs().mean() > 0.05
    prob = explain(predictor, x, node="left", target="probability")
    assert prob.maps.shape == left.maps.shape and not torch.equal(prob.maps, left.maps)


def test_cli_writes_one_png_per_image(trained, tmp_path, capsys):
    ckpt, root = trained
    out = tmp_path / "explain"
    assert explain_main(["--ckpt_path", str(ckpt), str(root / "left"), "--output", str(out)]) == 0
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == len(list((root / "left").rglob("*.png"))) == 12
    with Image.open(pngs[0]) as img:
        assert img.width == 3 * (PANEL_PX + 4) + 4  # photo + one overlay per level
    assert "12 images" in capsys.readouterr().err
    one = tmp_path / "one"
    args = ["--ckpt_path", str(ckpt), str(root / "right" / "red"), "--output", str(one)]
    assert explain_main([*args, "--levels", "[2]"]) == 0
    with Image.open(next(one.glob("*.png"))) as img:
        assert img.width == 2 * (PANEL_PX + 4) + 4


def test_cli_errors_name_the_valid_choices(trained, tmp_path, capsys):
    ckpt, root = trained
    base = ["--ckpt_path", str(ckpt), str(root / "left" / "red"), "--output", str(tmp_path)]
    assert explain_main([*base, "--node", "lefft"]) == 1
    assert "did you mean ['left'" in capsys.readouterr().err
    assert explain_main([*base, "--method", "gradcam2"]) == 1
    err = capsys.readouterr().err
    assert all(m in err for m in METHODS)
    assert not list(tmp_path.glob("*.png"))


# ----------------------------------------------------------------------------- W&B
def test_wandb_sample_table_cams_are_one_captioned_overlay_per_level(tmp_path):
    import wandb

    from hmc.training import HMCModule
    from hmc.training.wandb_callbacks import LogPredictionSamples, cam_images

    module = HMCModule(toy(), backbone="test_efficientnet", head_kwargs=HRN_TINY)
    module.train()
    x = torch.randn(3, 3, 64, 64)
    cams = cam_images(module, x)
    assert module.training  # the module's mode is restored
    assert len(cams) == 3 and all(len(row) == 2 for row in cams)
    decoded = module.decode(module.eval()(x))
    h = module.hierarchy
    paths = zip(decoded.nodes.tolist(), decoded.probs.tolist(), strict=True)
    for row, (nodes, probs) in zip(cams, paths, strict=True):
        assert all(isinstance(image, wandb.Image) for image in row)
        captions = [f"{h.name(c)} ({p:.2f})" for c, p in zip(nodes, probs, strict=True)]
        assert [image._caption for image in row] == captions
    with pytest.raises(ValueError, match="`cam_method`.*'gradcampp'"):
        LogPredictionSamples(cams=True, cam_method="gradcam3")


def test_explaining_a_module_applies_its_calibration_temperatures():
    from hmc import explain
    from hmc.calibration import Calibration
    from hmc.training import HMCModule

    torch.manual_seed(0)
    module = HMCModule(toy(), backbone="test_efficientnet", head_kwargs=HRN_TINY).eval()
    x = torch.randn(2, 3, 64, 64)
    raw = explain(module, x)
    module.calibration = Calibration({"node_scores": 4.0, "leaf_logits": 0.25})
    calibrated = explain(module, x)
    decoded = module.decode(module(x))  # the module's own calibrated decoding
    assert torch.equal(calibrated.nodes, decoded.nodes)
    assert torch.allclose(calibrated.probs, decoded.probs, atol=1e-6)
    assert not torch.allclose(calibrated.probs, raw.probs, atol=1e-3)
