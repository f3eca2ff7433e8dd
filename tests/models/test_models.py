"""Heads, HierarchicalClassifier, registry, config round trip, compile/trace/export."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hmc.hierarchy import Hierarchy
from hmc.models import (
    FlatHead,
    HeadOutput,
    HierarchicalClassifier,
    HRNHead,
    LeafHead,
    build_model,
    create_head,
    leaf_log_marginals,
    list_heads,
    register_head,
)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit deprecation notes

SMALL_HRN = dict(mid_channels=8, hidden=16, feature_dim=12)
C = 16  # feature-map channels for head-only tests


def balanced() -> Hierarchy:
    rows = [
        (f"o{i}", f"f{i}{j}", f"s{i}{j}{k}") for i in range(2) for j in range(2) for k in range(3)
    ]
    return Hierarchy.from_paths(rows, level_names=["order", "family", "species"])


def ragged() -> Hierarchy:
    # leaves at depth 1 ("c"), 2 ("a2", "b3") and 3
    rows = [
        ("a", "a1", "a1x"),
        ("a", "a1", "a1y"),
        ("a", "a2"),
        ("b", "b1", "b1x"),
        ("b", "b2", "b2x"),
        ("b", "b3"),
        ("c",),
    ]
    return Hierarchy.from_paths(rows)


TREES = {"balanced": balanced, "ragged": ragged}


def head_kwargs(name: str) -> dict:
    return dict(SMALL_HRN) if name == "hrn" else {}


def test_registry_lists_the_three_heads():
    assert {"hrn", "flat", "leaf"} <= set(list_heads())
    h = balanced()
    assert isinstance(create_head(h, "hrn", C, **SMALL_HRN), HRNHead)
    assert isinstance(create_head(h, "flat", C), FlatHead)
    assert isinstance(create_head(h, "leaf", C), LeafHead)
    with pytest.raises(
        ValueError, match=r"Expected argument `head` to be one of \[.*'hrn'.*'nope'"
    ):
        create_head(h, "nope", C)
    with pytest.raises(TypeError, match="hmc.Hierarchy"):
        create_head({"not": "a tree"}, "flat", C)


@pytest.mark.parametrize("tree", sorted(TREES))
@pytest.mark.parametrize("name", ["hrn", "flat", "leaf"])
def test_head_shapes(name, tree):
    h = TREES[tree]()
    head = create_head(h, name, C, **head_kwargs(name))
    out = head(torch.randn(5, C, 3, 3))
    assert isinstance(out, HeadOutput)
    assert out.node_scores.shape == (5, h.num_nodes)
    assert len(out.level_features) == h.num_levels
    width = SMALL_HRN["feature_dim"] if name == "hrn" else C
    assert all(f.shape == (5, width) for f in out.level_features)
    if name == "flat":
        assert out.leaf_logits is None
    else:
        assert out.leaf_logits.shape == (5, len(h.leaves))
    assert (
        head.score_kind == {"hrn": "states", "flat": "level_logits", "leaf": "leaf_log_probs"}[name]
    )


@pytest.mark.parametrize("tree", sorted(TREES))
def test_hrn_levels_score_their_own_columns_from_residual_sums(tree):
    h = TREES[tree]()
    head = HRNHead(h, C, **SMALL_HRN).eval()
    x = torch.randn(4, C, 3, 3)
    out = head(x)
    embeds = [branch.embed(x) for branch in head.levels]
    for d, branch in enumerate(head.levels, start=1):
        expected_feature = F.relu(sum(embeds[:d]))
        torch.testing.assert_close(out.level_features[d - 1], expected_feature)
        cols = h.level_slice(d)
        assert branch.classifier.out_features == cols.stop - cols.start
        torch.testing.assert_close(out.node_scores[:, cols], branch.classifier(expected_feature))
    torch.testing.assert_close(out.leaf_logits, head.leaf_classifier(out.level_features[-1]))


def test_hrn_paper_widths_by_default():
    h = balanced()
    head = HRNHead(h, 64)
    block = head.levels[0].block
    assert block[0].conv.weight.shape == (32, 64, 1, 1)  # 1x1 C -> C/2
    assert block[1].conv.weight.shape == (64, 32, 3, 3)  # 3x3 C/2 -> C
    assert block[1].conv.padding == (1, 1) and block[0].conv.bias is None
    bn = block[0].bn  # timm's BatchNormAct2d: BN (the authors' momentum 0.01), then ReLU
    assert isinstance(bn, nn.BatchNorm2d) and bn.momentum == 0.01 and isinstance(bn.act, nn.ReLU)
    fc = head.levels[0].fc
    assert [type(m) for m in fc] == [nn.BatchNorm1d, nn.Linear, nn.BatchNorm1d, nn.ELU, nn.Linear]
    assert (fc[1].in_features, fc[1].out_features, fc[4].out_features) == (64, 1024, 512)
    assert len(head.levels) == h.num_levels


def no_grad(module: nn.Module) -> bool:
    return all(p.grad is None or not p.grad.any() for p in module.parameters())


def test_hrn_residual_carries_child_gradient_into_parent_blocks():
    h = balanced()
    torch.manual_seed(0)
    x = torch.randn(4, C, 3, 3)
    deepest = h.level_slice(h.num_levels)

    head = HRNHead(h, C, **SMALL_HRN)
    head(x).node_scores[:, deepest].logsumexp(1).sum().backward()
    for branch in head.levels:  # species scores reach order and family blocks
        grad = branch.block[0].conv.weight.grad
        assert grad is not None and grad.abs().sum() > 0

    head.zero_grad(set_to_none=True)
    head(x).node_scores[:, h.level_slice(1)].logsumexp(1).sum().backward()
    assert head.levels[0].block[0].conv.weight.grad.abs().sum() > 0
    assert no_grad(head.levels[1]) and no_grad(head.levels[2])  # parents don't feed children

    ablation = HRNHead(h, C, residual=False, **SMALL_HRN)
    ablation(x).node_scores[:, deepest].logsumexp(1).sum().backward()
    assert no_grad(ablation.levels[0]) and not no_grad(ablation.levels[2])


def _reference_leaf_marginals(h: Hierarchy, leaf_logits: torch.Tensor) -> torch.Tensor:
    log_p = leaf_logits.log_softmax(-1)
    leaves = h.tensors().leaves.tolist()
    out = torch.empty(leaf_logits.shape[0], h.num_nodes)
    for col in range(h.num_nodes):
        below = [leaves.index(c) for c in h.leaves_below(col).tolist()]
        out[:, col] = log_p[:, below].logsumexp(-1)
    return out


@pytest.mark.parametrize("tree", sorted(TREES))
def test_leaf_head_marginalises_leaf_softmax(tree):
    h = TREES[tree]()
    head = LeafHead(h, C)
    out = head(torch.randn(3, C, 2, 2))
    torch.testing.assert_close(out.node_scores, _reference_leaf_marginals(h, out.leaf_logits))
    # every level plus the leaves above it partitions the probability mass
    t = h.tensors()
    probs = out.node_scores.exp()
    for d in range(1, h.num_levels + 1):
        cover = (t.levels == d) | (t.is_leaf & (t.levels < d))
        torch.testing.assert_close(probs[:, cover].sum(1), torch.ones(3))


def test_leaf_marginals_stay_finite_for_extreme_logits():
    h = ragged()
    head = LeafHead(h, C)
    with torch.no_grad():
        head.classifier.weight.mul_(1e4)
    x = torch.randn(2, C, 2, 2, requires_grad=True)
    out = head(x)
    assert torch.isfinite(out.node_scores).all()
    torch.testing.assert_close(out.node_scores, _reference_leaf_marginals(h, out.leaf_logits))
    out.node_scores.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("backbone", ["resnet10t", "mobilenetv3_small_050"])
@pytest.mark.parametrize("name", list_heads())
def test_build_model_every_registered_head(backbone, name):
    h = ragged()
    model = build_model(h, backbone, name, head_kwargs=head_kwargs(name))
    assert model.hierarchy is h and model.score_kind == model.head.score_kind
    out = model(torch.randn(2, 3, 32, 32))
    assert out.node_scores.shape == (2, h.num_nodes)
    out.node_scores.sum().backward()


def test_register_custom_head_and_build():
    @register_head("test-linear")
    class LinearHead(nn.Module):
        score_kind = "level_logits"

        def __init__(self, hierarchy, in_channels, *, scale: float = 1.0):
            super().__init__()
            self.config = {"scale": scale}
            self.fc = nn.Linear(in_channels, hierarchy.num_nodes)

        def forward(self, x):
            pooled = x.mean((2, 3))
            return HeadOutput(self.fc(pooled), None, [pooled])

    model = build_model(balanced(), "resnet10t", "test-linear", head_kwargs={"scale": 2.0})
    assert model.config["head_kwargs"] == {"scale": 2.0}
    assert model(torch.randn(2, 3, 32, 32)).node_scores.shape == (2, balanced().num_nodes)
    with pytest.raises(ValueError, match="already registered"):
        register_head("test-linear")(FlatHead)


@pytest.mark.parametrize("name", ["hrn", "leaf"])
def test_config_round_trip_rebuilds_the_same_model(tmp_path, name):
    h = ragged()
    model = build_model(h, "resnet10t", name, freeze=1, head_kwargs=head_kwargs(name)).eval()
    config = json.loads(json.dumps(model.config))  # JSON-able, survives a trip through text
    assert config["hierarchy"] == h.to_dict()
    path = tmp_path / "model.pt"
    model.save(path)
    blob = torch.load(path, weights_only=True)
    again = HierarchicalClassifier.from_config(blob["config"])
    again.load_state_dict(blob["state_dict"])
    again.eval()
    assert again.hierarchy == h and again.config == config
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(again(x).node_scores, model(x).node_scores)
    loaded = HierarchicalClassifier.load(path).eval()
    torch.testing.assert_close(loaded(x).node_scores, model(x).node_scores)


def test_from_config_rejects_foreign_dicts():
    with pytest.raises(ValueError, match="format 'hmc-model/2'"):
        HierarchicalClassifier.from_config({"backbone": "resnet10t"})


def test_param_groups_split_head_and_backbone():
    model = build_model(balanced(), "resnet10t", "hrn", head_kwargs=SMALL_HRN)
    groups = model.param_groups()
    assert [(g["name"], g["lr"]) for g in groups] == [("head", 0.002), ("backbone", 0.0002)]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    optimizer = torch.optim.SGD(model.param_groups(0.1, 0.01, weight_decay=5e-4), momentum=0.9)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.01]

    frozen = build_model(balanced(), "resnet10t", "flat", freeze="all")
    assert [g["name"] for g in frozen.param_groups()] == ["head"]
    counts = frozen.param_counts()
    assert counts["trainable"] == counts["head"] > 0


def test_hrn_compiles_and_trains_under_torch_compile():
    torch.manual_seed(0)
    model = build_model(balanced(), "resnet10t", "hrn", head_kwargs=SMALL_HRN).eval()
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    (ref.node_scores.sum() + ref.leaf_logits.sum()).backward()
    eager_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(model, backend="aot_eager")
    out = compiled(x)
    assert isinstance(out, HeadOutput)
    torch.testing.assert_close(out.node_scores, ref.node_scores)
    torch.testing.assert_close(out.leaf_logits, ref.leaf_logits)
    (out.node_scores.sum() + out.leaf_logits.sum()).backward()
    for name, p in model.named_parameters():  # the compiled backward matches eager's
        torch.testing.assert_close(p.grad, eager_grads[name], msg=name)


@pytest.mark.parametrize("name", ["hrn", "flat", "leaf"])
def test_heads_torchscript(name):
    h = ragged()
    head = create_head(h, name, C, **head_kwargs(name)).eval()
    x = torch.randn(2, C, 3, 3)
    scripted = torch.jit.script(head)
    torch.testing.assert_close(scripted(x).node_scores, head(x).node_scores)


def test_hrn_model_jit_trace_and_torch_export():
    model = build_model(ragged(), "resnet10t", "hrn", head_kwargs=SMALL_HRN).eval()
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    traced = torch.jit.trace(model, x, strict=False)
    node_scores, leaf_logits, _ = traced(x)
    torch.testing.assert_close(node_scores, ref.node_scores)
    torch.testing.assert_close(leaf_logits, ref.leaf_logits)
    exported = torch.export.export(model, (x,))
    out = exported.module()(x)
    torch.testing.assert_close(out.node_scores, ref.node_scores)


def test_hrn_onnx_export(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    model = build_model(ragged(), "resnet10t", "hrn", head_kwargs=SMALL_HRN).eval()
    path = tmp_path / "hrn.onnx"
    x = torch.randn(2, 3, 32, 32)
    torch.onnx.export(model, (x,), str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    node_scores, leaf_logits = session.run(None, {session.get_inputs()[0].name: x.numpy()})[:2]
    with torch.no_grad():
        ref = model(x)
    torch.testing.assert_close(torch.from_numpy(node_scores), ref.node_scores, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.from_numpy(leaf_logits), ref.leaf_logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("tree", sorted(TREES))
def test_leaf_head_agrees_with_leaf_log_marginals(tree):
    h = TREES[tree]()
    out = LeafHead(h, C)(torch.randn(3, C, 2, 2))
    torch.testing.assert_close(out.node_scores, leaf_log_marginals(h, out.leaf_logits))


def test_build_model_accepts_a_shipped_hierarchy_name():
    model = build_model("cub200-hrn", "resnet10t", "hrn", head_kwargs=SMALL_HRN)
    sizes = [c.out_features for c in (b.classifier for b in model.head.levels)]
    assert sizes == [13, 38, 200] and model.head.leaf_classifier.out_features == 200


@pytest.mark.parametrize("name", ["hrn", "flat", "leaf"])
def test_each_head_names_the_loss_that_fits_its_scores(name):
    from hmc.losses import build_loss

    h = ragged()
    head = create_head(h, name, C, **head_kwargs(name))
    assert head.default_loss == name  # one vocabulary: the loss is named after its head
    loss = build_loss(h, head.default_loss)
    out = head(torch.randn(4, C, 2, 2))
    value = loss(out.node_scores, torch.arange(4), leaf_logits=out.leaf_logits)
    assert value.ndim == 0 and torch.isfinite(value) and value > 0
