"""The LightningModule: a HierarchicalClassifier, its loss, a decoder and per-stage metrics.

Everything is built from plain, YAML-friendly arguments so ``hmc fit --config x.yaml`` configs
stay plain YAML; the hierarchy arrives from the data module (``data.hierarchy`` is linked to
``model.hierarchy`` in :mod:`hmc.cli`). Checkpoints carry their hierarchy and model config under
``checkpoint["hmc"]`` and load with ``torch.load(weights_only=True)``; :func:`hmc.load_model`
turns one into a predictor with no other file.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from hmc.decoding import decode as decode_scores
from hmc.hierarchy import Hierarchy
from hmc.losses import build_loss
from hmc.metrics import HierarchicalMetrics, LevelConfusion
from hmc.models import build_model
from hmc.predict import CHECKPOINT_KEY, check_hierarchy, load_model, read_checkpoint
from hmc.training.artifacts import resolve_hierarchy
from hmc.training.checkpoint import ResultsTable, RunCheckpoint, format_results

__all__ = [
    "DEFAULT_LOSS",
    "HMCModule",
    "ResultsTable",
    "RunCheckpoint",
    "format_results",
    "load_model",
]

# The loss that fits each head's score kind (hmc.models: HeadOutput / score_kind).
DEFAULT_LOSS = {"states": "hrn", "level_logits": "per_level_ce", "leaf_log_probs": "leaf_marginal"}
OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("cosine", "constant")
DECODERS = ("argmax", "marginal", "map", "threshold")
STAGES = ("val", "test")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(
            f"Expected argument `{name}` to be one of {list(choices)}, but got {value!r}"
        )


class HMCModule(pl.LightningModule):
    """Train and evaluate a hierarchical classifier.

    Args:
        hierarchy: a :class:`Hierarchy` or a name/path for :func:`hmc.load_hierarchy`
            (under ``hmc fit`` it comes from ``data.hierarchy``).
        backbone: timm architecture, e.g. ``"resnet50.tv_in1k"`` (the paper's).
        head: ``"hrn"`` | ``"flat"`` | ``"leaf"``.
        pretrained: ``True`` for timm hub weights, or an offline source name (hmc.models).
        pretrained_path: local backbone weights file.
        head_kwargs: head options (HRN: ``hidden``, ``feature_dim``, ``mid_channels``, ...).
        loss: a name for :func:`hmc.losses.build_loss`; default by head score kind
            (hrn -> "hrn", flat -> "per_level_ce", leaf -> "leaf_marginal").
        loss_kwargs: loss options; ``scores`` ("sigmoid" | "logits") is also the decoder's.
        decoder: evaluation decoding, ``"argmax"`` | ``"marginal"`` | ``"map"`` | ``"threshold"``.
        optimizer: ``"sgd"`` (paper, momentum + weight decay) or ``"adamw"``.
        lr: head learning rate (paper 0.002). backbone_lr: backbone's (paper 0.0002).
        scheduler: ``"cosine"`` (annealed per epoch to 0 over ``max_epochs``) or ``"constant"``.
        warmup_epochs: linear warm-up epochs before the schedule.
        freeze_backbone: ``True`` freezes the backbone (and its BatchNorm statistics) for the
            whole run; an int ``k`` freezes it for the first ``k`` epochs (single process only).
        decoder_threshold: probability threshold of the ``"threshold"`` decoder.
        metrics_kwargs: options of :class:`hmc.metrics.HierarchicalMetrics` (``metrics``,
            ``top_k``, ``ap_thresholds``, ...).

    After each validation/test epoch, ``last_metrics`` holds the computed metrics as floats
    under their logged names (``"val/acc/species"``, ``"val/loss"``, ...), ``last_stage`` is
    ``"val"``/``"test"`` and ``last_confusions`` is ``HierarchicalMetrics.confusions()``.
    """

    def __init__(
        self,
        hierarchy: str | Hierarchy = "cub200",
        backbone: str = "resnet50",
        head: str = "hrn",
        pretrained: bool | str = False,
        pretrained_path: str | None = None,
        head_kwargs: dict[str, Any] | None = None,
        loss: str | None = None,
        loss_kwargs: dict[str, Any] | None = None,
        decoder: str = "argmax",
        optimizer: str = "sgd",
        lr: float = 0.002,
        backbone_lr: float = 0.0002,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        scheduler: str = "cosine",
        warmup_epochs: int = 0,
        freeze_backbone: bool | int = False,
        decoder_threshold: float = 0.5,
        metrics_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        _check_choice("decoder", decoder, DECODERS)
        _check_choice("optimizer", optimizer, OPTIMIZERS)
        _check_choice("scheduler", scheduler, SCHEDULERS)
        if isinstance(freeze_backbone, int) and not isinstance(freeze_backbone, bool):
            if freeze_backbone < 0:
                raise ValueError(
                    f"Expected argument `freeze_backbone` to be a bool or a number of epochs "
                    f">= 0, but got {freeze_backbone}"
                )
        # Only plain values go to hyper_parameters (weights_only loading); the hierarchy
        # travels in checkpoint["hmc"] (see on_save_checkpoint).
        self.save_hyperparameters(ignore=["hierarchy"])
        self.hierarchy: Hierarchy = resolve_hierarchy(hierarchy)
        self.model = build_model(
            backbone,
            self.hierarchy,
            head=head,
            pretrained=pretrained,
            pretrained_path=pretrained_path,
            freeze="all" if freeze_backbone is True else None,
            **(head_kwargs or {}),
        )
        self.score_kind: str = self.model.head.score_kind
        loss_kwargs = dict(loss_kwargs or {})
        self.scores: str = loss_kwargs.get("scores", "sigmoid")
        self.loss_name = loss or DEFAULT_LOSS[self.score_kind]
        self.loss_fn = build_loss(self.loss_name, self.hierarchy, **loss_kwargs)
        metrics = HierarchicalMetrics(self.hierarchy, **(metrics_kwargs or {}))
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.last_metrics: dict[str, float] = {}
        self.last_confusions: dict[str, list] = {}
        self.last_stage: str | None = None
        self._frozen_epochs = 0 if isinstance(freeze_backbone, bool) else int(freeze_backbone)
        self._backbone_grad = True

    # ------------------------------------------------------------------ steps
    def forward(self, images: Tensor):
        """images [B, 3, H, W] -> HeadOutput(node_scores [B, N], leaf_logits, level_features)."""
        return self.model(images)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, targets = batch
        out = self.model(images)
        loss = self.loss_fn(out.node_scores, targets, leaf_logits=out.leaf_logits)
        # A tensor, not a float: Lightning syncs to host only at its logging interval.
        self.log(
            "train/loss", loss, on_step=True, on_epoch=True, prog_bar=True,
            batch_size=targets.shape[0],
        )  # fmt: skip
        return loss

    def decode(self, node_scores: Tensor):
        """node_scores [B, N] -> Decoded(nodes [B, D], probs [B, D], node_probs [B, N]) with
        the evaluation decoder."""
        return decode_scores(
            self.hierarchy,
            node_scores.float(),
            self.hparams.decoder,
            kind=self.score_kind,
            scores=self.scores,
            threshold=self.hparams.decoder_threshold,
        )

    def _eval_step(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        images, targets = batch
        out = self.model(images)
        loss = self.loss_fn(out.node_scores, targets, leaf_logits=out.leaf_logits)
        decoded = self.decode(out.node_scores)
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
        decoded = self.decode(self.model(images).node_scores)
        return decoded._asdict()

    def _metrics(self, stage: str) -> HierarchicalMetrics:
        return self.val_metrics if stage == "val" else self.test_metrics

    def _epoch_end(self, stage: str) -> None:
        metrics = self._metrics(stage)
        if self.trainer.sanity_checking:
            metrics.reset()
            return
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
        max_epochs = self.trainer.max_epochs if self._trainer is not None else None
        by_epoch = max_epochs is not None and max_epochs > 0
        if by_epoch:
            total, warmup, interval = max_epochs, hp.warmup_epochs, "epoch"
        else:  # max_steps-bounded runs: the same shape, stepped per optimiser step
            steps = self.trainer.estimated_stepping_batches  # inf: no end, no annealing
            total = max(1, int(steps)) if math.isfinite(steps) else 0
            if self.trainer.train_dataloader is None:  # as estimated_stepping_batches does
                self.trainer.fit_loop.setup_data()
            batches = self.trainer.num_training_batches
            accumulate = max(1, self.trainer.accumulate_grad_batches)
            per_epoch = max(1, int(batches) // accumulate) if math.isfinite(batches) else 1
            warmup, interval = hp.warmup_epochs * per_epoch, "step"
        kind = hp.scheduler if total else "constant"
        lambdas = _schedule(kind, total, warmup)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambdas)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": interval}}

    def setup(self, stage: str) -> None:
        if self._frozen_epochs and stage == "fit" and self.trainer.world_size > 1:
            raise ValueError(
                f"`freeze_backbone={self._frozen_epochs}` (freeze for the first epochs) is not "
                "supported with more than one process: DDP fixes the set of trained parameters "
                "when it wraps the model. Use `freeze_backbone: true` or a single process."
            )

    def on_train_epoch_start(self) -> None:
        # The learning rates (so no LearningRateMonitor, which fails with --trainer.logger false).
        opt = self.optimizers(use_pl_optimizer=False)
        lrs = {f"lr/{g.get('name', i)}": float(g["lr"]) for i, g in enumerate(opt.param_groups)}
        self.log_dict(lrs, on_step=False, on_epoch=True, batch_size=1)
        if self._frozen_epochs:
            grad = self.current_epoch >= self._frozen_epochs
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
        checkpoint[CHECKPOINT_KEY] = {
            "format": "hmc-checkpoint/1",
            "hierarchy": self.hierarchy.to_dict(),
            "fingerprint": self.hierarchy.fingerprint(),
            "model_config": self.model.config,
            "decoder": {
                "method": self.hparams.decoder,
                "kind": self.score_kind,
                "scores": self.scores,
                "threshold": self.hparams.decoder_threshold,
            },
            "loss": self.loss_name,
            "transform": self._eval_transform_config(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get(CHECKPOINT_KEY)
        if meta is None:
            raise ValueError(
                "the checkpoint has no 'hmc' entry; it was not written by hmc.training.HMCModule"
            )
        check_hierarchy(Hierarchy.from_dict(meta["hierarchy"]), self.hierarchy, "the checkpoint")

    def _eval_transform_config(self) -> dict[str, Any]:
        """The data module's evaluation transform settings, for :func:`hmc.load_model`."""
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        cfg = getattr(dm, "transform_config", None)
        if callable(cfg):
            cfg = cfg()
        if isinstance(cfg, dict):
            return dict(cfg)
        out: dict[str, Any] = {}
        for key in ("preset", "image_size"):
            value = getattr(dm, key, None)
            if value is not None:
                out[key] = value
        data_config = (getattr(dm, "dataset_options", None) or {}).get("data_config")
        if data_config:
            out["data_config"] = dict(data_config)
        return out

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
        meta = read_checkpoint(checkpoint_path)[CHECKPOINT_KEY]
        stored = Hierarchy.from_dict(meta["hierarchy"])
        if hierarchy is not None:
            check_hierarchy(
                stored, resolve_hierarchy(hierarchy), f"checkpoint {str(checkpoint_path)!r}"
            )
        kwargs["pretrained"] = False  # weights come from the checkpoint; never download
        kwargs.pop("pretrained_path", None)
        return super().load_from_checkpoint(
            checkpoint_path,
            map_location=map_location,
            hparams_file=hparams_file,
            strict=strict,
            hierarchy=stored,
            pretrained_path=None,
            **kwargs,
        )


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


def _schedule(kind: str, total: int, warmup: int):
    """LambdaLR factor: linear warm-up over ``warmup`` units, then cosine to 0 at ``total``
    (or constant)."""

    def factor(t: int) -> float:
        if t < warmup:
            return (t + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        span = max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(t - warmup, span) / span))

    return factor
