"""The LightningModule: a HierarchicalClassifier, its loss, a decoder and per-stage metrics.

Everything is built from plain, YAML-friendly arguments so ``hmc fit --config x.yaml`` configs
stay plain YAML; the hierarchy arrives from the data module (``data.hierarchy`` is linked to
``model.hierarchy`` in :mod:`hmc.cli`). Checkpoints carry their hierarchy and model config under
``checkpoint["hmc"]`` and load with ``torch.load(weights_only=True)``; :func:`hmc.load_model`
turns one into a predictor with no other file.

Why parts are built from names (``head: hrn``, ``optimizer: sgd``) rather than injected as
objects, as LightningCLI's ``OptimizerCallable`` would: ``hyper_parameters`` must rebuild the
module from plain values (``load_from_checkpoint`` with ``weights_only=True``), and the
optimiser needs the model's two parameter groups (head and backbone learning rates, the
paper's 10:1), which a generic optimiser callable does not know; so ``hmc fit`` runs with
``auto_configure_optimizers=False``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor

from hmc.calibration import Calibration, fit_calibration
from hmc.checks import check_choice
from hmc.decoding import (
    DEFAULT_PROBABILITIES,
    PROBABILITIES,
    SCORES,
    check_decoder,
    node_log_probabilities,
)
from hmc.decoding import decode as decode_output
from hmc.hierarchy import Hierarchy
from hmc.losses import build_loss
from hmc.metrics import HierarchicalMetrics, LevelConfusion
from hmc.models import HeadOutput, build_model
from hmc.predict import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_KEY,
    check_hierarchy,
    load_model,
    read_checkpoint,
)
from hmc.training.artifacts import resolve_hierarchy

__all__ = [
    "HMCModule",
    "load_model",
]

OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("cosine", "constant")
# The evaluation decoder of an HRN head (with its leaf head) when none is given: consistent
# top-down decoding of the "product" probabilities, at least as accurate as the paper's decoder
# at every relabel ratio in benchmarks/results/relabel_study.md (issue 12).
DEFAULT_HRN_DECODER = "marginal"


class HMCModule(pl.LightningModule):
    """Train and evaluate a hierarchical classifier.

    The defaults train with :class:`hmc.training.HMCDataModule`'s defaults (Fashion-MNIST, its
    shipped hierarchy): a small random-init ResNet; the paper's recipe is in
    ``configs/cub200_hrn.yaml``.

    Args:
        hierarchy: a :class:`Hierarchy` or a name/path for :func:`hmc.load_hierarchy`
            (under ``hmc fit`` it comes from ``data.hierarchy``).
        backbone: timm architecture, e.g. ``"resnet50.tv_in1k"`` (the paper's).
        head: ``"hrn"`` | ``"flat"`` | ``"leaf"`` (:func:`hmc.models.list_heads`).
        pretrained: timm's pretrained weights (hub, or ``pretrained_cfg_overlay={"file": ...}``).
        checkpoint_path: a local backbone weights file or an offline source name
            (:func:`hmc.models.create_backbone`).
        pretrained_cfg_overlay: timm's ``pretrained_cfg_overlay``.
        freeze: backbone stages frozen for the whole run: ``"all"``, or the last frozen stage
            (0 = stem); frozen BatchNorms keep their statistics.
        head_only_epochs: train only the head for the first ``k`` epochs (the backbone is
            frozen, BatchNorm statistics included, then trained; single process only).
        head_kwargs: head options (HRN: ``hidden``, ``feature_dim``, ``mid_channels``, ...).
        loss: a name for :func:`hmc.losses.build_loss`; default the head's ``default_loss``.
        loss_kwargs: loss options (``leaf_weight``, ``reduction``, ...).
        scores: ``"logits"`` (default) or ``"sigmoid"`` (the paper's): how an HRN
            (``"states"``) head's scores enter the combinatorial loss and the decoder; stored in
            checkpoints. For other heads it must be left unset (a ValueError says so). The
            paper's exact recipe: ``scores="sigmoid"``, ``decoder="paper"`` (leaf loss "ce").
            Defaults (logits, "product", "marginal", calibrate in the configs) are the best
            consistent HRN variant of ``benchmarks/results/relabel_study.md``.
        probabilities: how an HRN head's output becomes node probabilities
            (:data:`hmc.decoding.PROBABILITIES`: ``"states"``, ``"leafhead"``, ``"product"``);
            default ``"product"`` (``"states"`` for an HRN head without its leaf head); every
            decoder, metric and ``hmc predict`` uses it; stored in checkpoints. For other heads
            it must be left unset.
        calibrate: after each validation epoch, fit temperatures of the probability model on
            the validation outputs (:func:`hmc.calibration.fit_calibration`, the NLL of the
            validation labels; every process fits on the gathered outputs, so identically); the
            validation metrics of that epoch, the test and predict steps, checkpoints and
            :func:`hmc.load_model` then use the calibrated probabilities. The validation metrics
            are then measured on the split the temperatures were fitted on.
        decoder: evaluation decoding, one of :data:`hmc.decoding.DECODERS`; default (None)
            :data:`DEFAULT_HRN_DECODER` for an HRN head with its leaf head, else ``"argmax"``.
        decoder_kwargs: its options, e.g. ``{"threshold": 0.7}``; stored in checkpoints, so
            :func:`hmc.load_model` decodes as evaluation did.
        metrics_kwargs: options of :class:`hmc.metrics.HierarchicalMetrics`.
        optimizer: ``"sgd"`` (paper, momentum + weight decay) or ``"adamw"``.
        lr: head learning rate (paper 0.002). backbone_lr: backbone's (paper 0.0002).
        scheduler: ``"cosine"`` (annealed to 0 at the end of training) or ``"constant"``.
        warmup_epochs: linear warm-up epochs before the schedule.

    After each validation/test epoch, ``last_metrics`` holds the computed metrics as floats
    under their logged names (``"val/acc/species"``, ``"val/loss"``, ...), ``last_stage`` is
    ``"val"``/``"test"`` and ``last_confusions`` is ``HierarchicalMetrics.confusions()``.
    """

    def __init__(
        self,
        hierarchy: str | Hierarchy = "fashion-mnist",
        backbone: str = "resnet10t",
        head: str = "hrn",
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        pretrained_cfg_overlay: dict[str, Any] | None = None,
        freeze: int | str | bool | None = None,
        head_only_epochs: int = 0,
        head_kwargs: dict[str, Any] | None = None,
        loss: str | None = None,
        loss_kwargs: dict[str, Any] | None = None,
        scores: str | None = None,
        probabilities: str | None = None,
        calibrate: bool = False,
        decoder: str | None = None,
        decoder_kwargs: dict[str, Any] | None = None,
        metrics_kwargs: dict[str, Any] | None = None,
        optimizer: str = "sgd",
        lr: float = 0.002,
        backbone_lr: float = 0.0002,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        scheduler: str = "cosine",
        warmup_epochs: int = 0,
    ) -> None:
        super().__init__()
        if decoder is not None:
            check_decoder(decoder, decoder_kwargs)  # before building the model: fail fast
        check_choice("optimizer", optimizer, OPTIMIZERS)
        check_choice("scheduler", scheduler, SCHEDULERS)
        for name, rate in (("lr", lr), ("backbone_lr", backbone_lr)):
            if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate < 1e3:
                part = "head" if name == "lr" else "backbone"
                raise ValueError(
                    f"Expected argument `{name}` (the {part} learning rate) to be a finite "
                    f"number in [0, 1000), but got {rate!r}"
                )
        if isinstance(head_only_epochs, bool) or not isinstance(head_only_epochs, int):
            raise TypeError(
                f"Expected argument `head_only_epochs` to be an int, but got {head_only_epochs!r}"
            )
        if head_only_epochs < 0:
            raise ValueError(
                f"Expected argument `head_only_epochs` to be >= 0, but got {head_only_epochs}"
            )
        if "scores" in (loss_kwargs or {}):
            raise ValueError(
                "`scores` is an HMCModule argument (model.scores), not a loss option: it also "
                "sets the decoder and is stored in checkpoints"
            )
        # Only plain values go to hyper_parameters (weights_only loading); the hierarchy
        # travels in checkpoint["hmc"] (see on_save_checkpoint).
        self.save_hyperparameters(ignore=["hierarchy"])
        self.hierarchy: Hierarchy = resolve_hierarchy(hierarchy)
        self.model = build_model(
            self.hierarchy,
            backbone,
            head,
            pretrained=pretrained,
            checkpoint_path=checkpoint_path,
            pretrained_cfg_overlay=pretrained_cfg_overlay,
            freeze=freeze,
            head_kwargs=head_kwargs,
        )
        self.score_kind: str = self.model.head.score_kind
        if scores is not None and self.score_kind != "states":
            raise ValueError(
                f"`scores` applies to HRN (score kind 'states') heads only, but head {head!r} "
                f"gives {self.score_kind!r}; leave `scores` unset"
            )
        # HRN default "logits": better than the paper's sigmoid in benchmarks/relabel_study.py.
        self.scores: str = scores or ("logits" if self.score_kind == "states" else "sigmoid")
        check_choice("scores", self.scores, SCORES)
        if probabilities is not None and self.score_kind != "states":
            raise ValueError(
                f"`probabilities` chooses an HRN (score kind 'states') probability model, but "
                f"head {head!r} gives {self.score_kind!r}; leave `probabilities` unset"
            )
        self.probabilities: str | None = None
        has_leaf = self.score_kind == "leaf_log_probs" or (
            getattr(self.model.head, "leaf_classifier", None) is not None
        )
        if decoder is None:
            decoder = DEFAULT_HRN_DECODER if self.score_kind == "states" and has_leaf else "argmax"
        self.decoder: str = decoder
        self.decoder_kwargs = check_decoder(decoder, decoder_kwargs)
        if self.decoder == "paper" and not has_leaf:
            raise ValueError(
                "decoder 'paper' needs the head's leaf logits (HeadOutput.leaf_logits), but the "
                f"output of this {self.score_kind!r} head ({head!r}) has none; use another "
                "decoder, e.g. 'argmax'"
            )
        if self.score_kind == "states":
            default = DEFAULT_PROBABILITIES if has_leaf else "states"
            self.probabilities = probabilities or default
            check_choice("probabilities", self.probabilities, PROBABILITIES)
            if self.probabilities != "states" and not has_leaf:
                raise ValueError(
                    f"`probabilities={self.probabilities!r}` reads the HRN leaf head, but this "
                    "head has none (head_kwargs leaf_classifier=False); use 'states'"
                )
        if not isinstance(calibrate, bool):
            raise TypeError(f"Expected argument `calibrate` to be a bool, but got {calibrate!r}")
        self.calibration = Calibration()
        self._val_outputs: list[tuple[Tensor, Tensor | None, Tensor]] = []
        loss_options = dict(loss_kwargs or {})
        if self.score_kind == "states":
            loss_options["scores"] = self.scores
        self.loss_name = loss or getattr(self.model.head, "default_loss", None)
        if self.loss_name is None:
            raise ValueError(f"head {head!r} declares no `default_loss`; give `loss`")
        self.loss_fn = build_loss(self.hierarchy, self.loss_name, **loss_options)
        metrics = HierarchicalMetrics(self.hierarchy, **(metrics_kwargs or {}))
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.last_metrics: dict[str, float] = {}
        self.last_confusions: dict[str, list] = {}
        self.last_stage: str | None = None
        self._backbone_grad = True

    # ------------------------------------------------------------------ steps
    def forward(self, images: Tensor):
        """images [B, 3, H, W] -> HeadOutput(node_scores [B, N], leaf_logits, level_features)."""
        return self.model(images)

    def _forward_batch(self, x: Tensor):
        # Under hmc.training.FeatureCache the fit batches hold the frozen stages' output; the
        # cache's `rest` view (the backbone's later stages, same parameters) continues from it.
        rest = self.__dict__.get("feature_input")
        return self.model(x) if rest is None else self.model.head(rest(x))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, targets = batch
        out = self._forward_batch(images)
        loss = self.loss_fn(out.node_scores, targets, leaf_logits=out.leaf_logits)
        # A tensor, not a float: Lightning syncs to host only at its logging interval.
        self.log(
            "train/loss", loss, on_step=True, on_epoch=True, prog_bar=True,
            batch_size=targets.shape[0],
        )  # fmt: skip
        return loss

    def decode(self, output: Any):
        """A head's output (or its [B, N] node scores) -> Decoded(nodes [B, D], probs [B, D],
        node_probs [B, N]) with the evaluation decoder and its options."""
        return decode_output(
            self.hierarchy,
            output,
            self.decoder,
            score_kind=self.score_kind,
            scores=self.scores,
            probabilities=self.probabilities,
            temperatures=self.calibration.temperatures,
            **self.decoder_kwargs,
        )

    @property
    def temperatures(self) -> dict[str, float]:
        """The calibration temperatures by head output name (empty = uncalibrated), as
        :attr:`hmc.predict.Predictor.temperatures`, so ``hmc.explain(module)`` applies them."""
        return dict(self.calibration.temperatures)

    def node_log_probs(self, output: Any, temperatures: dict[str, Any] | None = None) -> Tensor:
        """[B, N] log node probabilities of a head output under the module's probability model
        (``temperatures`` default: the module's calibration)."""
        temps = self.calibration.temperatures if temperatures is None else temperatures
        return node_log_probabilities(
            self.hierarchy, output, self.score_kind, self.scores, self.probabilities, temps
        )

    def _eval_step(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        images, targets = batch
        out = self._forward_batch(images) if stage == "val" else self.model(images)
        loss = self.loss_fn(out.node_scores, targets, leaf_logits=out.leaf_logits)
        if stage == "val" and self.hparams.calibrate:
            # Decoded at the epoch end, with the temperatures fitted on the whole split.
            z = None if out.leaf_logits is None else out.leaf_logits.detach()
            self._val_outputs.append((out.node_scores.detach(), z, targets))
        else:
            decoded = self.decode(out)
            self._metrics(stage).update(decoded.node_probs, targets, decoded.nodes)
        self.log(
            f"{stage}/loss", loss, on_step=False, on_epoch=True, sync_dist=True,
            batch_size=targets.shape[0],
        )  # fmt: skip

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(
        self, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Tensor]:
        """Batches of images (or (images, anything)) -> decoded ``nodes`` [B, D], ``probs``
        [B, D] and ``node_probs`` [B, N]."""
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        decoded = self.decode(self.model(images))
        return decoded._asdict()

    def _metrics(self, stage: str) -> HierarchicalMetrics:
        return self.val_metrics if stage == "val" else self.test_metrics

    def _calibrate(self) -> None:
        """Fit the temperatures on this epoch's validation outputs (gathered from every
        process, so every process fits the same ones), then decode and score them."""
        parts, self._val_outputs = self._val_outputs, []
        if not parts:
            return
        x = torch.cat([p[0] for p in parts])
        z = None if parts[0][1] is None else torch.cat([p[1] for p in parts])
        t = torch.cat([p[2] for p in parts])
        local = HeadOutput(x, z, [])
        if self.trainer.world_size > 1:
            flat = [g.flatten(0, 1) for g in self.all_gather((x, t) if z is None else (x, t, z))]
            gathered, t_all = HeadOutput(flat[0], flat[2] if z is not None else None, []), flat[1]
        else:
            gathered, t_all = local, t
        self.calibration = fit_calibration(self.node_log_probs, _to_cpu(gathered), t_all.cpu())
        decoded = self.decode(local)
        self.val_metrics.update(decoded.node_probs, t, decoded.nodes)
        self.log_dict(
            {f"calibration/{k}": float(v) for k, v in self.calibration.temperatures.items()},
            batch_size=1,
        )

    def _epoch_end(self, stage: str) -> None:
        metrics = self._metrics(stage)
        if self.trainer.sanity_checking:
            self._val_outputs = []
            metrics.reset()
            return
        if stage == "val" and self.hparams.calibrate:
            self._calibrate()
        values = metrics.compute()  # names already carry the "val/" / "test/" prefix
        # compute() already synced across processes; sync_dist averages identical values.
        self.log_dict(values, sync_dist=True)
        self.last_stage = stage
        # A collection built without the confusion group has nothing to report.
        has_confusion = any(isinstance(m, LevelConfusion) for m in metrics.values(copy_state=False))
        self.last_confusions = metrics.confusions() if has_confusion else {}
        metrics.reset()
        last = {k: float(v) for k, v in values.items() if torch.is_tensor(v) and v.numel() == 1}
        logged = self.trainer.callback_metrics.get(f"{stage}/loss")
        if logged is not None:
            last[f"{stage}/loss"] = float(logged)
        self.last_metrics = last

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_fit_end(self) -> None:
        if self.hparams.calibrate and not self.calibration.temperatures:
            rank_zero_warn(
                "calibrate=True, but no validation epoch ran, so no temperatures were fitted: "
                "the model's probabilities are uncalibrated (give a validation split)"
            )

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    # ------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        groups = self.model.param_groups(head_lr=hp.lr, backbone_lr=hp.backbone_lr)
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(
                groups, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay
            )
        else:
            opt = torch.optim.AdamW(groups, lr=hp.lr, weight_decay=hp.weight_decay)
        t = self.trainer
        if t.max_steps in (None, -1) and t.max_epochs is not None and t.max_epochs > 0:
            total, warmup, interval = t.max_epochs, hp.warmup_epochs, "epoch"
        else:  # max_steps-bounded runs: the same shape, stepped per optimiser step
            steps = t.estimated_stepping_batches  # sets up the train loader if max_epochs > 0
            total = int(steps) if math.isfinite(steps) else 0  # inf: no end, no annealing
            warmup, interval = 0, "step"
            if hp.warmup_epochs:
                batches = t.num_training_batches
                if not math.isfinite(batches):
                    raise ValueError(
                        "`warmup_epochs` in a run bounded by max_steps needs the batches per "
                        "epoch: set trainer.max_epochs too (any bound; the first one reached "
                        "ends the run), or warmup_epochs=0"
                    )
                per_epoch = max(1, math.ceil(int(batches) / max(1, t.accumulate_grad_batches)))
                warmup = hp.warmup_epochs * per_epoch
        sched = _lr_schedule(opt, hp.scheduler if total else "constant", total, warmup)
        if sched is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": interval}}

    def setup(self, stage: str) -> None:
        if self.hparams.head_only_epochs and stage == "fit" and self.trainer.world_size > 1:
            raise ValueError(
                f"`head_only_epochs={self.hparams.head_only_epochs}` is not supported with more "
                "than one process: DDP fixes the set of trained parameters when it wraps the "
                "model. Use `freeze: all` (every stage, the whole run) or a single process."
            )

    def on_train_epoch_start(self) -> None:
        # The learning rates (so no LearningRateMonitor, which fails with --trainer.logger false).
        opt = self.optimizers(use_pl_optimizer=False)
        lrs = {f"lr/{g.get('name', i)}": float(g["lr"]) for i, g in enumerate(opt.param_groups)}
        self.log_dict(lrs, on_step=False, on_epoch=True, batch_size=1)
        if self.hparams.head_only_epochs:
            grad = self.current_epoch >= self.hparams.head_only_epochs
            if grad != self._backbone_grad:
                self.model.backbone.requires_grad_(grad)
                self._backbone_grad = grad
            self.model.backbone.train(grad)

    def train(self, mode: bool = True) -> HMCModule:
        super().train(mode)
        # Lightning calls train() after each validation; a frozen backbone keeps its BN stats.
        if mode and not self._backbone_grad:
            self.model.backbone.eval()
        return self

    # ------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning stores the module's and data module's hparams as given (e.g. a RelabelConfig
        # dataclass); plain values keep the file loadable with torch.load(weights_only=True).
        for key in ("hyper_parameters", "datamodule_hyper_parameters"):
            if key in checkpoint:
                checkpoint[key] = _plain(dict(checkpoint[key]))
        # The weights are in the checkpoint: rebuilding from it must not download or read the
        # initial backbone weights again (their source stays in model_config["init_weights"]).
        if "hyper_parameters" in checkpoint:
            checkpoint["hyper_parameters"].update(
                pretrained=False, checkpoint_path=None, pretrained_cfg_overlay=None
            )
        checkpoint[CHECKPOINT_KEY] = {
            "format": CHECKPOINT_FORMAT,
            "hierarchy": self.hierarchy.to_dict(),
            "fingerprint": self.hierarchy.fingerprint(),
            "model_config": self.model.config,
            "score_kind": self.score_kind,
            "scores": self.scores,
            "probabilities": self.probabilities,
            "calibration": self.calibration.to_dict() if self.calibration.temperatures else None,
            "decoder": self.decoder,
            "decoder_kwargs": _plain(self.decoder_kwargs),
            "loss": self.loss_name,
            "loss_kwargs": _plain(dict(self.hparams.loss_kwargs or {})),
            "transform": self._eval_transform_config(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get(CHECKPOINT_KEY)
        if meta is None:
            raise ValueError(
                "the checkpoint has no 'hmc' entry; it was not written by hmc.training.HMCModule"
            )
        check_hierarchy(Hierarchy.from_dict(meta["hierarchy"]), self.hierarchy, "the checkpoint")
        self.calibration = Calibration.from_dict(meta.get("calibration"))

    def _eval_transform_config(self) -> dict[str, Any]:
        """The data module's evaluation transform (``build_transforms`` keywords, from its
        ``transform_config()``), for :func:`hmc.load_model`; empty without one."""
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        cfg = getattr(dm, "transform_config", None)
        return _plain(dict(cfg())) if callable(cfg) else {}

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: str | Path,
        map_location: Any = None,
        hparams_file: str | Path | None = None,
        strict: bool | None = None,
        hierarchy: Hierarchy | str | None = None,
        **kwargs: Any,
    ) -> HMCModule:
        """Lightning's loader, with the hierarchy taken from the checkpoint (or checked
        against it when given)."""
        meta = read_checkpoint(checkpoint_path)[CHECKPOINT_KEY]  # older formats upgraded
        stored = Hierarchy.from_dict(meta["hierarchy"])
        if meta.get("probabilities") is not None:  # a format-2 checkpoint: "states"
            kwargs.setdefault("probabilities", meta["probabilities"])
        if hierarchy is not None:
            check_hierarchy(
                stored, resolve_hierarchy(hierarchy), f"checkpoint {str(checkpoint_path)!r}"
            )
        return super().load_from_checkpoint(
            checkpoint_path,
            map_location=map_location,
            hparams_file=hparams_file,
            strict=strict,
            hierarchy=stored,
            **kwargs,
        )


def _to_cpu(output: HeadOutput) -> HeadOutput:
    z = None if output.leaf_logits is None else output.leaf_logits.float().cpu()
    return HeadOutput(output.node_scores.float().cpu(), z, [])


def _plain(value: Any) -> Any:
    """``value`` with dataclasses, paths, hierarchies and other objects made JSON-like."""
    if isinstance(value, (str, int, float, bool, type(None), Tensor)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, Hierarchy):
        return value.to_dict()
    return str(value)


def _lr_schedule(
    opt: torch.optim.Optimizer, kind: str, total: int, warmup: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Linear warm-up over ``warmup`` units from 1/(warmup+1) of each group's rate, then cosine
    annealing to 0 at ``total`` units (or constant). None: constant without warm-up."""
    sched = torch.optim.lr_scheduler
    parts: list[sched.LRScheduler] = []
    if warmup > 0:
        parts.append(sched.LinearLR(opt, start_factor=1 / (warmup + 1), total_iters=warmup))
    if kind == "cosine":
        parts.append(sched.CosineAnnealingLR(opt, T_max=max(1, total - warmup)))
    if len(parts) == 2:
        return sched.SequentialLR(opt, parts, milestones=[warmup])
    return parts[0] if parts else None
