"""The shape of the public API: argument names and orders, and the agreed vocabulary.

A change here is an API change: it must be deliberate (and go in the changelog), never a side
effect. The rules (CONTRIBUTING.md): a function or class that needs a hierarchy takes it first,
or as the keyword ``hierarchy=`` where it has a default; the decoding method is ``decoder`` with
options ``decoder_kwargs``; a head's score type is ``score_kind``; ``freeze`` means backbone
stages and ``head_only_epochs`` the epochs of head-only training; option dicts are ``*_kwargs``.
"""

from __future__ import annotations

import importlib
import inspect

import pytest

import hmc

KW, POS, VAR_KW = (
    inspect.Parameter.KEYWORD_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    inspect.Parameter.VAR_KEYWORD,
)


def _params(obj) -> list[inspect.Parameter]:
    target = obj.__init__ if inspect.isclass(obj) else obj
    return [p for n, p in inspect.signature(target).parameters.items() if n not in ("self", "cls")]


def shape(obj) -> str:
    """``"a, b, *, c, **d"``: names in order, ``*`` before keyword-only ones."""
    out, star = [], False
    for p in _params(obj):
        if p.kind == KW and not star:
            out.append("*")
            star = True
        if p.kind == inspect.Parameter.VAR_POSITIONAL:
            out.append(f"*{p.name}")
            star = True
        else:
            out.append(f"**{p.name}" if p.kind == VAR_KW else p.name)
    return ", ".join(out)


def _get(path: str):
    module, _, name = path.rpartition(".")
    obj = importlib.import_module(module)
    for part in name.split(":"):
        obj = getattr(obj, part)
    return obj


SHAPES = {
    # decoding
    "hmc.decoding.decode": (
        "hierarchy, output, decoder, *, score_kind, scores, probabilities, temperatures, "
        "**decoder_kwargs"
    ),
    "hmc.decoding.node_probabilities": (
        "hierarchy, output, score_kind, scores, probabilities, temperatures"
    ),
    "hmc.decoding.node_log_probabilities": (
        "hierarchy, output, score_kind, scores, probabilities, temperatures"
    ),
    "hmc.calibration.fit_calibration": "node_log_probs, output, targets, fields, max_iter",
    "hmc.decoding.node_marginals": "hierarchy, output, scores",
    "hmc.decoding.check_decoder": "decoder, decoder_kwargs",
    # losses
    "hmc.losses.build_loss": "hierarchy, name, **loss_kwargs",
    "hmc.losses.sigmoid_loss_floor": "hierarchy, targets",
    "hmc.losses.CombinatorialLoss": "hierarchy, scores, reduction, ignore_index",
    "hmc.losses.HRNLoss": (
        "hierarchy, scores, combinatorial_weight, leaf_weight, reduction, ignore_index, leaf_loss"
    ),
    "hmc.losses.PerLevelCrossEntropy": "hierarchy, reduction, ignore_index",
    "hmc.losses.LeafMarginalLoss": "hierarchy, reduction, ignore_index",
    # models
    "hmc.models.build_model": (
        "hierarchy, backbone, head, *, pretrained, checkpoint_path, pretrained_cfg_overlay, "
        "strict, freeze, backbone_kwargs, head_kwargs"
    ),
    "hmc.models.create_backbone": (
        "name, *, pretrained, checkpoint_path, pretrained_cfg_overlay, strict, freeze, "
        "**timm_kwargs"
    ),
    "hmc.models.create_head": "hierarchy, name, in_features, **head_kwargs",
    "hmc.models.freeze_stages": "model, upto",
    "hmc.models.leaf_log_marginals": "hierarchy, leaf_logits",
    "hmc.models.load_checkpoint": "model, checkpoint_path, *, strict",
    "hmc.models.HierarchicalClassifier": "hierarchy, backbone, head, config",
    "hmc.models.HRNHead": (
        "hierarchy, in_features, *, mid_channels, block_channels, hidden, feature_dim, "
        "residual, leaf_classifier, bn_momentum"
    ),
    "hmc.models.FlatHead": "hierarchy, in_features, *, dropout",
    "hmc.models.LeafHead": "hierarchy, in_features, *, dropout",
    # predict
    "hmc.predict.load_model": "checkpoint, *, hierarchy, device, decoder, decoder_kwargs",
    "hmc.predict.Predictor": (
        "model, *, decoder, decoder_kwargs, scores, probabilities, calibration, transform, "
        "transform_config, device"
    ),
    "hmc.predict.Predictor:__call__": "images, decoder, decoder_kwargs",
    "hmc.predict.Predictor:predict_files": (
        "paths, batch_size, decoder, decoder_kwargs, on_bad_image"
    ),
    # metrics: evaluate takes its arguments in the order of update
    "hmc.metrics.evaluate": "hierarchy, node_probs, targets, predictions, *, batch_size, **kwargs",
    "hmc.metrics.HierarchicalMetrics:update": "node_probs, targets, predictions",
}


@pytest.mark.parametrize("path", sorted(SHAPES))
def test_argument_names_and_order(path):
    assert shape(_get(path)) == SHAPES[path]


def test_the_lightning_module_speaks_the_vocabulary():
    from hmc.training import HMCDataModule, HMCModule

    names = [p.name for p in _params(HMCModule)]
    assert names[:3] == ["hierarchy", "backbone", "head"]
    assert {
        "pretrained", "checkpoint_path", "pretrained_cfg_overlay", "freeze", "head_only_epochs",
        "head_kwargs", "loss", "loss_kwargs", "scores", "probabilities", "calibrate", "decoder",
        "decoder_kwargs", "metrics_kwargs",
    } <= set(names)  # fmt: skip
    # HMCModule() and HMCDataModule() train together: the same hierarchy by default.
    module_default = inspect.signature(HMCModule).parameters["hierarchy"].default
    data_default = inspect.signature(HMCDataModule).parameters["dataset"].default
    assert module_default == data_default == "fashion-mnist"


def test_the_decoder_names_are_one_list():
    from hmc.decoding import DECODER_OPTIONS, DECODERS

    expected = ("argmax", "marginal", "map", "threshold", "paper")
    assert DECODERS == tuple(DECODER_OPTIONS) == expected


def test_loss_names_are_head_names():
    from hmc.losses import LOSSES
    from hmc.models import create_head, list_heads

    h = hmc.Hierarchy.from_paths([("a", "a1"), ("b", "b1")])
    for name in list_heads():
        if name in ("hrn", "flat", "leaf"):  # the shipped heads (tests may register more)
            head = create_head(
                h, name, 8, **({"hidden": 4, "feature_dim": 4} if name == "hrn" else {})
            )
            assert head.default_loss == name and name in LOSSES


# Old words for the agreed concepts: none may name a public argument.
RETIRED = {
    "kind": "score_kind",
    "method": "decoder",
    "decoder_threshold": "decoder_kwargs",
    "freeze_backbone": "freeze (stages) or head_only_epochs (epochs)",
    "pretrained_path": "checkpoint_path",
    "dataset_options": "dataset_kwargs",
}
# Public callables that take a hierarchy elsewhere than first, owned by other parts of the
# package; each is a known exception to fix, not a precedent.
HIERARCHY_NOT_FIRST = {"hmc.training.format_results", "hmc.training.log_hierarchy_artifact"}
PUBLIC_MODULES = [
    "hmc.decoding",
    "hmc.losses",
    "hmc.models",
    "hmc.metrics",
    "hmc.data",
    "hmc.predict",
    "hmc.hierarchy",
    "hmc.training",
]


def _public_callables():
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if callable(obj) and not isinstance(obj, type(inspect)):
                try:
                    _params(obj)
                except (TypeError, ValueError):  # builtins without a signature
                    continue
                yield f"{module_name}.{name}", obj


def test_every_public_callable_takes_the_hierarchy_first_or_by_keyword():
    bad = []
    for path, obj in _public_callables():
        params = _params(obj)
        names = [p.name for p in params]
        if "hierarchy" not in names or path in HIERARCHY_NOT_FIRST:
            continue
        p = params[names.index("hierarchy")]
        if names[0] != "hierarchy" and p.default is inspect.Parameter.empty:
            bad.append(f"{path}({', '.join(names[:4])}, ...)")
    assert not bad, "hierarchy must come first (or be a keyword with a default):\n" + "\n".join(bad)


def test_no_public_argument_uses_a_retired_word():
    bad = []
    for path, obj in _public_callables():
        for p in _params(obj):
            if p.name in RETIRED or p.name.endswith("_options"):
                use = RETIRED.get(p.name, "*_kwargs")
                bad.append(f"{path}: `{p.name}` (use {use})")
    assert not bad, "\n".join(bad)
