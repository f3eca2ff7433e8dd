"""HMCModule under a real pl.Trainer on tiny in-memory data: losses per head, optimiser groups
and schedule, logged names, checkpoints (weights_only, the hmc entry, hierarchy checks, the
decoder and its options), load_model, freezing, Lightning's ModelCheckpoint as configs/base.yaml
sets it up (resume, SIGTERM) and the results table."""

from __future__ import annotations

import json
import math

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from hmc import Hierarchy
from hmc.calibration import Calibration
from hmc.decoding import decode
from hmc.losses import HRNLoss, LeafMarginalLoss, PerLevelCrossEntropy
from hmc.models import HeadOutput
from hmc.predict import HierarchyMismatchError, Predictor, load_model
from hmc.training import HMCModule, ResultsTable, format_results


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is as fast, and far faster on cores shared with other
    processes (OpenMP threads spin waiting for each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY_HEAD = {"mid_channels": 8, "block_channels": 16, "hidden": 16, "feature_dim": 8}


def toy(grouping: str = "ab") -> Hierarchy:
    """2 levels, 5 leaves; grouping "ba" moves one leaf (same ids, other structure)."""
    rows = [("a", "a1"), ("a", "a2"), ("b", "b1"), ("b", "b2"), ("b", "b3")]
    if grouping == "ba":
        rows[2] = ("a", "b1")
    return Hierarchy.from_paths(rows, level_names=["coarse", "fine"], metadata={"name": "toy"})


def toy_data(h: Hierarchy, n: int = 20, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    leaves = h.indices(h.leaves)
    targets = leaves[torch.arange(n) % len(leaves)]
    targets[::4] = h.tensors().parent[targets[::4]]  # every 4th label is coarse
    return TensorDataset(torch.randn(n, 3, 16, 16, generator=g), targets)


def module(h: Hierarchy | None = None, **kw) -> HMCModule:
    kw.setdefault("backbone", "test_resnet")
    kw.setdefault("head_kwargs", TINY_HEAD if kw.get("head", "hrn") == "hrn" else None)
    return HMCModule(h or toy(), **kw)


def last_checkpoint(tmp_path, **kw) -> ModelCheckpoint:
    """Lightning's ModelCheckpoint as configs/base.yaml configures it: <dirpath>/last.ckpt at the
    end of every training epoch and when training stops on an exception."""
    options = dict(
        filename="last", save_top_k=1, enable_version_counter=False,
        save_on_train_epoch_end=True, save_on_exception=True,
    )  # fmt: skip
    return ModelCheckpoint(dirpath=tmp_path / "checkpoints", **{**options, **kw})


def trainer(tmp_path, epochs: int = 1, callbacks=None, **kw) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks or [],
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks or []),
        **kw,
    )


def loader(h: Hierarchy, n: int = 20, seed: int = 0) -> DataLoader:
    return DataLoader(toy_data(h, n, seed), batch_size=10)


def fit_checkpoint(tmp_path, h: Hierarchy | None = None, **kw):
    h = h or toy()
    m = module(h, **kw)
    t = trainer(tmp_path, callbacks=[last_checkpoint(tmp_path)])
    t.fit(m, loader(h), loader(h, seed=1))
    return m, tmp_path / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize(
    ("head", "loss_cls", "kind"),
    [
        ("hrn", HRNLoss, "states"),
        ("flat", PerLevelCrossEntropy, "level_logits"),
        ("leaf", LeafMarginalLoss, "leaf_log_probs"),
    ],
)
def test_default_loss_and_decoder_follow_the_head(head, loss_cls, kind):
    m = module(head=head)
    assert isinstance(m.loss_fn, loss_cls)
    assert m.score_kind == kind == m.model.head.score_kind
    out = m(torch.randn(3, 3, 16, 16))
    dec = m.decode(out)  # the whole head output (HRN: the leaf head too)
    assert m.decoder == ("marginal" if head == "hrn" else "argmax")
    ref = decode(m.hierarchy, out, m.decoder, score_kind=kind, scores=m.scores)
    torch.testing.assert_close(dec.nodes, ref.nodes)
    assert m.probabilities == ("product" if head == "hrn" else None)


def test_bad_choices_name_the_argument():
    with pytest.raises(ValueError, match=r"Expected argument `optimizer` to be one of"):
        module(optimizer="adam")
    with pytest.raises(ValueError, match=r"`decoder`.*'beam'"):
        module(decoder="beam")


@pytest.mark.parametrize(("opt", "cls"), [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)])
def test_param_groups_and_cosine_schedule(opt, cls):
    m = module(optimizer=opt, lr=0.002, backbone_lr=0.0002, warmup_epochs=1)
    m.trainer = pl.Trainer(max_epochs=5, logger=False, enable_progress_bar=False)
    conf = m.configure_optimizers()
    optim, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert isinstance(optim, cls)
    assert conf["lr_scheduler"]["interval"] == "epoch"
    groups = {g["name"]: g for g in optim.param_groups}
    assert groups["head"]["lr"] == pytest.approx(0.002 / 2)  # warm-up epoch 0: half
    assert groups["backbone"]["lr"] == pytest.approx(0.0002 / 2)
    assert groups["head"]["weight_decay"] == 5e-4
    if opt == "sgd":
        assert groups["head"]["momentum"] == 0.9
    n_params = sum(p.numel() for g in optim.param_groups for p in g["params"])
    assert n_params == sum(p.numel() for p in m.model.parameters())
    lrs = []
    for _ in range(5):
        lrs.append(optim.param_groups[0]["lr"])
        optim.step()
        sched.step()
    # warm-up (1 epoch), then cosine from the full lr towards 0 at max_epochs
    expected = [0.5] + [0.5 * (1 + math.cos(math.pi * t / 4)) for t in range(4)]
    assert lrs == pytest.approx([0.002 * f for f in expected])


def test_fit_logs_stable_names_and_exposes_last_metrics(tmp_path):
    h = toy()
    m = module(h)
    t = trainer(tmp_path, epochs=2)
    t.fit(m, loader(h), loader(h, seed=1))
    logged = set(t.callback_metrics)
    for name in ["train/loss", "val/loss", "val/acc/coarse", "val/acc/fine", "val/acc/mean"]:
        assert name in logged
    for name in ["val/fpa", "val/tice", "val/hf1", "val/top5/fine", "val/ap/micro", "lr/head"]:
        assert name in logged
    assert m.last_stage == "val"
    assert set(m.last_metrics) >= {"val/acc/fine", "val/loss"}
    assert all(isinstance(v, float) for v in m.last_metrics.values())
    assert set(m.last_confusions) == {"coarse", "fine"}
    t.test(m, loader(h, seed=2), verbose=False)
    assert m.last_stage == "test" and "test/acc/fine" in m.last_metrics


def test_training_step_does_not_sync_to_host(tmp_path, monkeypatch):
    """training_step itself never calls .item()/.tolist()/float() on a tensor (Lightning may
    at its logging interval, outside the step). The first step may build cached index
    plans (one-time set-up), so the check starts at the second."""

    class Strict(HMCModule):
        def training_step(self, batch, batch_idx):
            if batch_idx == 0:
                return super().training_step(batch, batch_idx)

            def boom(*a, **k):
                raise AssertionError("host sync inside training_step")

            with monkeypatch.context() as mp:
                for name in ("item", "tolist", "__float__", "__bool__", "cpu", "numpy"):
                    mp.setattr(torch.Tensor, name, boom)
                return super().training_step(batch, batch_idx)

    h = toy()
    m = Strict(h, backbone="test_resnet", head_kwargs=TINY_HEAD)
    trainer(tmp_path, limit_val_batches=0).fit(m, loader(h, n=30))
    assert m.trainer.global_step == 3


def test_checkpoint_is_weights_only_and_carries_its_hierarchy(tmp_path):
    h = toy()
    m, ckpt_path = fit_checkpoint(tmp_path, h)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    meta = ckpt["hmc"]
    assert Hierarchy.from_dict(meta["hierarchy"]) == h
    assert meta["fingerprint"] == h.fingerprint()
    assert meta["model_config"]["backbone"] == "test_resnet"
    assert meta["format"] == "hmc-checkpoint/3"
    assert (meta["decoder"], meta["decoder_kwargs"], meta["score_kind"], meta["scores"]) == (
        "marginal",  # the HRN defaults
        {},
        "states",
        "logits",
    )
    assert (meta["probabilities"], meta["calibration"]) == ("product", None)
    assert "hierarchy" not in ckpt["hyper_parameters"]
    json.dumps(ckpt["hyper_parameters"])  # plain values only

    again = HMCModule.load_from_checkpoint(ckpt_path)  # no hierarchy argument needed
    assert again.hierarchy == h
    for k, v in m.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v)
    with pytest.raises(HierarchyMismatchError, match="fingerprint"):
        HMCModule.load_from_checkpoint(ckpt_path, hierarchy=toy("ba"))


def test_load_model_returns_a_ready_predictor(tmp_path):
    h = toy()
    m, ckpt_path = fit_checkpoint(tmp_path, h, decoder="marginal")
    p = load_model(ckpt_path)
    assert isinstance(p, Predictor)
    assert not p.model.training and p.hierarchy == h and p.decoder == "marginal"
    images = torch.randn(4, 3, 16, 16)
    m.eval()
    with torch.no_grad():
        expected = m.decode(m(images))
    got = p(images)
    torch.testing.assert_close(got.nodes, expected.nodes)
    torch.testing.assert_close(got.probs, expected.probs)
    rows = p.rows(got, ["a", "b", "c", "d"])
    assert rows[0]["image"] == "a" and set(rows[0]) >= {"path", "coarse", "fine_prob"}
    assert load_model(ckpt_path, hierarchy=h).hierarchy == h
    with pytest.raises(HierarchyMismatchError, match=r"trained on hierarchy 'toy'"):
        load_model(ckpt_path, hierarchy=toy("ba"))


def test_resuming_with_another_hierarchy_fails_clearly(tmp_path):
    _, ckpt_path = fit_checkpoint(tmp_path)
    other = toy("ba")
    m = module(other)
    t = trainer(tmp_path / "resume", epochs=2)
    with pytest.raises(HierarchyMismatchError, match="was trained on hierarchy"):
        t.fit(m, loader(other), ckpt_path=ckpt_path)
    with pytest.raises(HierarchyMismatchError):
        trainer(tmp_path / "val").validate(module(other), loader(other), ckpt_path=ckpt_path)


def test_freeze_all_stages_and_head_only_epochs(tmp_path):
    m = module(freeze="all")
    m.trainer = pl.Trainer(max_epochs=2, logger=False, enable_progress_bar=False)
    groups = m.configure_optimizers()["optimizer"].param_groups
    assert [g["name"] for g in groups] == ["head"]

    h = toy()
    m = module(h, head_only_epochs=1)
    before = [p.detach().clone() for p in m.model.backbone.parameters()]
    seen = []

    class Spy(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            changed = any(
                not torch.equal(a, b)
                for a, b in zip(before, pl_module.model.backbone.parameters(), strict=True)
            )
            seen.append((pl_module.model.backbone.training, changed))

    trainer(tmp_path, epochs=2, callbacks=[Spy()], limit_val_batches=0).fit(m, loader(h))
    # epoch 0: frozen (eval mode, unchanged weights); epoch 1: training
    assert seen == [(False, False), (True, True)]


def test_last_checkpoint_holds_the_final_step(tmp_path):
    h = toy()
    m = module(h)
    t = trainer(tmp_path, epochs=2, callbacks=[last_checkpoint(tmp_path)], limit_val_batches=0)
    t.fit(m, loader(h))  # 2 epochs of 2 steps
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4 == t.global_step


def test_results_table_prints_levels_and_writes_json(tmp_path, capsys):
    h = toy()
    m = module(h)
    t = trainer(tmp_path, callbacks=[ResultsTable()])
    t.test(m, loader(h), verbose=False)
    out = capsys.readouterr().out
    assert "test results per level" in out and "coarse" in out and "fine" in out
    saved = json.loads((tmp_path / "test_metrics.json").read_text())
    assert saved["metrics"]["test/acc/fine"] == pytest.approx(m.last_metrics["test/acc/fine"])


def test_format_results_marks_missing_and_nan():
    h = toy()
    text = format_results({"val/acc/coarse": 0.5, "val/acc/fine": float("nan")}, h, "val")
    lines = text.splitlines()
    assert lines[0] == "val results per level"
    assert "50.00" in lines[3] and "nan" in lines[4] and "-" in lines[4]


def test_ckpt_path_last_finds_the_run_checkpoint_with_a_versioned_logger(tmp_path):
    """`ckpt_path="last"` finds <dirpath>/last.ckpt, not a file in the logger's new version
    folder, and resuming overwrites it in place."""
    from pytorch_lightning.loggers import CSVLogger

    h = toy()

    def run(max_steps: int, **kw) -> pl.Trainer:
        t = pl.Trainer(
            default_root_dir=tmp_path, max_epochs=5, max_steps=max_steps, accelerator="cpu",
            logger=CSVLogger(tmp_path), enable_progress_bar=False, enable_model_summary=False,
            limit_val_batches=0,
            callbacks=[last_checkpoint(tmp_path, every_n_train_steps=1)],
        )  # fmt: skip
        t.fit(module(h), loader(h), **kw)
        return t

    run(1)
    t = run(3, ckpt_path="last")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt"]
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    assert t.ckpt_path == str(tmp_path / "checkpoints" / "last.ckpt")


def test_sigterm_saves_last_checkpoint_at_the_stopping_step(tmp_path):
    """After SIGTERM Lightning raises SIGTERMException from the loop at the end of the current
    batch (what this callback imitates); save_on_exception then writes last.ckpt at that step."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    class Term(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 3:
                raise SIGTERMException

    h = toy()
    t = trainer(
        tmp_path, epochs=5, callbacks=[last_checkpoint(tmp_path), Term()], limit_val_batches=0
    )
    with pytest.raises(SIGTERMException):
        t.fit(module(h), loader(h))
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3


def test_max_steps_runs_anneal_per_step_with_warmup_in_epochs(tmp_path):
    h = toy()
    m = module(h, warmup_epochs=1, lr=0.01, backbone_lr=0.01)
    lrs = []

    class Spy(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    t = pl.Trainer(
        default_root_dir=tmp_path, max_epochs=100, max_steps=6, accelerator="cpu", logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        limit_val_batches=0, callbacks=[Spy()],
    )  # fmt: skip
    t.fit(m, loader(h))  # 2 batches per epoch: warm-up over 2 steps, then cosine over 4
    expected = [1 / 3, 2 / 3] + [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert lrs == pytest.approx([0.01 * f for f in expected])
    unbounded = module(h, warmup_epochs=1)
    unbounded.trainer = pl.Trainer(max_epochs=-1, max_steps=6, logger=False)
    with pytest.raises(ValueError, match="set trainer.max_epochs too"):
        unbounded.configure_optimizers()


def test_metrics_without_the_confusion_group_still_finish_the_epoch(tmp_path):
    h = toy()
    m = module(h, metrics_kwargs={"metrics": ["acc", "fpa"]})
    t = trainer(tmp_path)
    t.fit(m, loader(h), loader(h, seed=1))
    assert "val/acc/fine" in m.last_metrics and "val/fpa" in m.last_metrics
    assert "val/hf1" not in m.last_metrics
    assert m.last_confusions == {}


def test_logit_scores_reach_both_the_loss_and_the_decoder(tmp_path):
    h = toy()
    m = module(h, scores="logits")
    assert m.loss_fn.combinatorial.scores == "logits"
    x = HeadOutput(torch.randn(4, h.num_nodes) * 5, torch.randn(4, len(h.leaves)), [])
    torch.testing.assert_close(
        m.decode(x).node_probs, decode(h, x, m.decoder, scores="logits").node_probs
    )
    assert not torch.allclose(m.decode(x).node_probs, decode(h, x, scores="sigmoid").node_probs)
    t = trainer(tmp_path)
    t.fit(m, loader(h), loader(h, seed=1))
    path = tmp_path / "logits.ckpt"
    t.save_checkpoint(path)
    assert load_model(path).scores == "logits"


def test_scores_is_a_module_argument_for_hrn_heads_only():
    with pytest.raises(ValueError, match=r"`scores` applies to HRN .* head 'flat'"):
        module(head="flat", scores="logits")
    with pytest.raises(ValueError, match="not a loss option"):
        module(loss_kwargs={"scores": "logits"})
    with pytest.raises(ValueError, match=r"Expected argument `scores` to be one of"):
        module(scores="softmax")
    assert module(head="flat").scores == "sigmoid"  # unset: the neutral default


def test_a_threshold_model_predicts_with_its_own_threshold_after_loading(tmp_path):
    h = toy()
    m, ckpt_path = fit_checkpoint(
        tmp_path, h, decoder="threshold", decoder_kwargs={"threshold": 0.9}
    )
    meta = torch.load(ckpt_path, weights_only=True)["hmc"]
    assert (meta["decoder"], meta["decoder_kwargs"]) == ("threshold", {"threshold": 0.9})
    p = load_model(ckpt_path)
    assert (p.decoder, p.decoder_kwargs) == ("threshold", {"threshold": 0.9})
    m.eval()
    images = torch.randn(16, 3, 16, 16)
    with torch.no_grad():
        out = m(images)
    got = p(images)
    torch.testing.assert_close(got.nodes, m.decode(out).nodes)
    # The stored threshold is the one used: the default 0.5 cuts differently on these images.
    at_default = decode(h, out, "threshold", threshold=0.5).nodes
    at_stored = decode(h, out, "threshold", threshold=0.9).nodes
    assert not torch.equal(at_default, at_stored), "the images do not tell the thresholds apart"
    assert torch.equal(got.nodes, at_stored)
    # Another decoder on load gets its own defaults, not the stored threshold.
    assert load_model(ckpt_path, decoder="argmax").decoder_kwargs == {}
    assert load_model(ckpt_path, decoder_kwargs={"threshold": 0.6}).decoder_kwargs == {
        "threshold": 0.6
    }


def test_bad_decoder_options_fail_at_construction():
    with pytest.raises(ValueError, match=r"`decoder_kwargs` of decoder 'argmax'"):
        module(decoder="argmax", decoder_kwargs={"threshold": 0.7})
    assert module(decoder="threshold").decoder_kwargs == {"threshold": 0.5}


# ------------------------------------------ probability model, calibration, old checkpoints
def test_probabilities_is_an_hrn_argument_with_a_leaf_head_default():
    with pytest.raises(ValueError, match=r"`probabilities` chooses an HRN .* head 'flat'"):
        module(head="flat", probabilities="product")
    with pytest.raises(ValueError, match=r"Expected argument `probabilities` to be one of"):
        module(probabilities="softmax")
    no_leaf = dict(TINY_HEAD, leaf_classifier=False)
    assert module(head_kwargs=no_leaf, loss_kwargs={"leaf_weight": 0}).probabilities == "states"
    with pytest.raises(ValueError, match="reads the HRN leaf head"):
        module(head_kwargs=no_leaf, loss_kwargs={"leaf_weight": 0}, probabilities="leafhead")
    with pytest.raises(ValueError, match=r"decoder 'paper' needs .* 'level_logits' head"):
        module(head="flat", decoder="paper")
    with pytest.raises(TypeError, match="`calibrate` to be a bool"):
        module(calibrate="yes")


@pytest.mark.parametrize("probabilities", ["states", "leafhead", "product"])
def test_calibration_round_trips_through_the_checkpoint(tmp_path, probabilities):
    """A calibrated module: the temperatures are fitted on the validation split, stored, and
    load_model / load_from_checkpoint predict the same calibrated probabilities."""
    h = toy()
    m, ckpt_path = fit_checkpoint(
        tmp_path, h, calibrate=True, probabilities=probabilities, decoder="marginal"
    )
    temps = m.calibration.temperatures
    used = {"states": ["node_scores"], "leafhead": ["leaf_logits"]}.get(probabilities)
    assert set(temps) == {"node_scores", "leaf_logits"}
    assert any(temps[f] != 1.0 for f in used or temps), temps  # a real fit, not identity
    meta = torch.load(ckpt_path, weights_only=True)["hmc"]
    assert Calibration.from_dict(meta["calibration"]) == m.calibration
    assert meta["probabilities"] == probabilities
    p = load_model(ckpt_path)
    assert p.calibration == m.calibration and p.probabilities == probabilities
    images = torch.randn(8, 3, 16, 16)
    m.eval()
    with torch.no_grad():
        out = m(images)
    got, want = p(images), m.decode(out)
    torch.testing.assert_close(got.node_probs, want.node_probs)
    torch.testing.assert_close(got.nodes, want.nodes)
    raw = decode(h, out, "marginal", probabilities=probabilities).node_probs
    assert not torch.allclose(got.node_probs, raw)  # the temperatures are applied
    again = HMCModule.load_from_checkpoint(ckpt_path)
    assert again.calibration == m.calibration
    torch.testing.assert_close(again.eval().decode(again(images)).node_probs, want.node_probs)


def test_paper_decoder_trains_and_validates(tmp_path):
    h = toy()
    m, ckpt_path = fit_checkpoint(tmp_path, h, decoder="paper")
    assert "val/acc/fine" in m.last_metrics
    images = torch.randn(4, 3, 16, 16)
    m.eval()
    with torch.no_grad():
        out = m(images)
    want = decode(h, out, "paper").nodes
    torch.testing.assert_close(load_model(ckpt_path)(images).nodes, want)
    torch.testing.assert_close(m.predict_step(images, 0)["nodes"], want)


def _rewrite(src, dst, **changes):
    ckpt = torch.load(src, weights_only=True)
    meta = ckpt["hmc"]
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    for key in ("probabilities", "calibrate"):
        ckpt["hyper_parameters"].pop(key, None)
    torch.save(ckpt, dst)
    return dst


def test_a_format_2_checkpoint_loads_with_the_states_model_and_no_calibration(tmp_path):
    h = toy()
    m, ckpt_path = fit_checkpoint(tmp_path, h, calibrate=True)
    old = _rewrite(
        ckpt_path, tmp_path / "old.ckpt",
        format="hmc-checkpoint/2", probabilities=None, calibration=None,
    )  # fmt: skip
    p = load_model(old)
    assert (p.probabilities, p.calibration) == ("states", Calibration())
    images = torch.randn(4, 3, 16, 16)
    m.eval()
    with torch.no_grad():
        out = m(images)
    want = decode(h, out, "argmax", scores=p.scores, probabilities="states")
    torch.testing.assert_close(p(images).node_probs, want.node_probs)
    again = HMCModule.load_from_checkpoint(old)
    assert again.probabilities == "states" and again.calibration == Calibration()


def test_a_format_1_checkpoint_fails_saying_how_to_convert_it(tmp_path):
    _, ckpt_path = fit_checkpoint(tmp_path)
    old = _rewrite(ckpt_path, tmp_path / "v1.ckpt", format="hmc-checkpoint/1")
    with pytest.raises(ValueError, match=r"'hmc-checkpoint/1'.*build_model.*load_state_dict"):
        load_model(old)
    with pytest.raises(ValueError, match=r"'hmc-checkpoint/1'"):
        HMCModule.load_from_checkpoint(old)


def test_calibrate_without_a_validation_split_warns(tmp_path):
    h = toy()
    m = module(h, calibrate=True)
    with pytest.warns(UserWarning, match="no temperatures were fitted"):
        trainer(tmp_path, limit_val_batches=0).fit(m, loader(h))
    assert m.calibration.temperatures == {}
