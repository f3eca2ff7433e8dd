"""What hmc logs to Weights & Biases: Lightning callbacks that do nothing unless the trainer
has a W&B logger (Lightning's or :class:`hmc.training.WandbLogger`), on rank zero.

- :class:`LogHierarchy`: the hierarchy as a W&B artifact; per-level accuracy panels by epoch.
- :class:`LogConfusionMatrices`: per-level (true, predicted, count) tables, bounded.
- :class:`LogPredictionSamples`: a table of fixed validation images with true/predicted paths.
- :class:`LogSummary`: final metrics in the run summary at fit/test end.

They read :class:`~hmc.training.callbacks.EvaluatedModule`.
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn

from hmc.hierarchy import Hierarchy
from hmc.training.artifacts import log_hierarchy_artifact
from hmc.training.callbacks import EvaluatedModule, ModuleCallback
from hmc.training.wandb import wandb_logger

__all__ = [
    "LogConfusionMatrices",
    "LogHierarchy",
    "LogPredictionSamples",
    "LogSummary",
    "cam_images",
    "fixed_batch",
]


class LogHierarchy(ModuleCallback):
    """Log ``pl_module.hierarchy`` as a W&B artifact of type ``"hierarchy"`` (once, at the
    first setup), record its name/fingerprint/level sizes in the run config, and plot
    ``<stage>/acc/<level>`` against ``epoch`` in the W&B workspace.

    Args:
        name: artifact name; default ``<hierarchy name>-<fingerprint[:8]>``.
        define_metrics: declare the per-level accuracy panels (``wandb.define_metric``).
    """

    def __init__(self, name: str | None = None, define_metrics: bool = True) -> None:
        self.name = name
        self.define_metrics = define_metrics
        self.artifact: Any = None

    def setup(self, trainer: pl.Trainer, pl_module: EvaluatedModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        logger = wandb_logger(trainer)
        if logger is None or self.artifact is not None:
            return
        run, hierarchy = logger.experiment, pl_module.hierarchy
        self.artifact = log_hierarchy_artifact(run, hierarchy, self.name)
        info = {
            "name": hierarchy.metadata.get("name"),
            "fingerprint": hierarchy.fingerprint(),
            "level_sizes": hierarchy.level_sizes(),
            "artifact": self.artifact.name,
        }
        run.config.update({"hierarchy_info": info}, allow_val_change=True)
        if self.define_metrics:
            run.define_metric("epoch")
            for st in ("val", "test"):
                for level in [*hierarchy.level_names, "mean"]:
                    run.define_metric(f"{st}/acc/{level}", step_metric="epoch")


class LogConfusionMatrices(ModuleCallback):
    """After each validation (not sanity check) and test epoch, log
    ``pl_module.last_confusions`` per level as a W&B table ``<stage>/confusion/<level>`` with
    columns (true, predicted, count), largest counts first, at most ``max_rows`` rows. Levels
    with at most ``max_matrix_classes`` nodes also get a full confusion-matrix chart
    ``<stage>/confusion_matrix/<level>`` (zeros included).
    """

    def __init__(
        self, max_rows: int = 1000, max_matrix_classes: int = 30, every_n_epochs: int = 1
    ) -> None:
        if max_rows < 1 or max_matrix_classes < 0 or every_n_epochs < 1:
            raise ValueError(
                "Expected `max_rows` >= 1, `max_matrix_classes` >= 0 and `every_n_epochs` >= 1, "
                f"but got {max_rows}, {max_matrix_classes}, {every_n_epochs}"
            )
        self.max_rows = max_rows
        self.max_matrix_classes = max_matrix_classes
        self.every_n_epochs = every_n_epochs

    def on_validation_end(self, trainer: pl.Trainer, pl_module: EvaluatedModule) -> None:
        if not trainer.sanity_checking and trainer.current_epoch % self.every_n_epochs == 0:
            self._log(trainer, pl_module, "val")

    def on_test_end(self, trainer: pl.Trainer, pl_module: EvaluatedModule) -> None:
        self._log(trainer, pl_module, "test")

    def _log(self, trainer: pl.Trainer, pl_module: EvaluatedModule, stage: str) -> None:
        logger = wandb_logger(trainer)
        if logger is None or not pl_module.last_confusions:
            return
        import wandb

        h = pl_module.hierarchy
        payload: dict[str, Any] = {}
        for level, rows in pl_module.last_confusions.items():
            rows = sorted(((t, p, int(c)) for t, p, c in rows), key=lambda r: -r[2])
            payload[f"{stage}/confusion/{level}"] = wandb.Table(
                columns=["true", "predicted", "count"],
                data=[[h.name(t), h.name(p), c] for t, p, c in rows[: self.max_rows]],
            )
            nodes = h.level_nodes(level)
            if len(nodes) <= self.max_matrix_classes:
                payload[f"{stage}/confusion_matrix/{level}"] = _matrix_chart(
                    h, nodes, rows, title=f"{stage} confusion: {level}"
                )
        logger.log_metrics(payload, step=trainer.global_step)


def _matrix_chart(h: Hierarchy, nodes: tuple[str, ...], rows: list, title: str) -> Any:
    """wandb.plot.confusion_matrix's chart, built from counts instead of per-sample labels."""
    import wandb

    names = [h.name(n) for n in nodes]
    labels = names if len(set(names)) == len(names) else list(nodes)  # ids if names collide
    counts = Counter()
    for t, p, c in rows:
        counts[t, p] += c
    data = [
        [labels[i], labels[j], counts[t, p]]
        for i, t in enumerate(nodes)
        for j, p in enumerate(nodes)
    ]
    table = wandb.Table(columns=["Actual", "Predicted", "nPredictions"], data=data)
    fields = {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"}
    return wandb.plot_table(
        "wandb/confusion_matrix/v1", table, fields, string_fields={"title": title}
    )


class LogPredictionSamples(ModuleCallback):
    """At the end of validation, predict a fixed set of ``num_samples`` validation images
    (evenly spaced over the dataset, taken once) in eval mode without gradients, decode them
    with the module's decoder, and log a W&B table ``key`` with the image, the true path and the
    predicted path with per-level probabilities ("Birds (0.98) > Gulls (0.71)").

    With ``cams=True`` the table also has one column per level, ``cam/<level>``: the
    class-activation map of the predicted node over the image (:func:`cam_images`, method
    ``cam_method``). The cost is one forward with autograd and one backward pass per level for
    the logged images.
    """

    def __init__(
        self,
        num_samples: int = 16,
        every_n_epochs: int = 1,
        key: str = "val/samples",
        cams: bool = False,
        cam_method: str = "gradcam",
    ):
        from hmc.checks import check_choice
        from hmc.explanations import METHODS

        check_choice("cam_method", cam_method, METHODS)
        if num_samples < 1 or every_n_epochs < 1:
            raise ValueError(
                "Expected `num_samples` >= 1 and `every_n_epochs` >= 1, but got "
                f"{num_samples} and {every_n_epochs}"
            )
        self.num_samples = num_samples
        self.every_n_epochs = every_n_epochs
        self.key = key
        self.cams = cams
        self.cam_method = cam_method
        self.batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self._images: list[Any] | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: EvaluatedModule) -> None:
        if trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs:
            return
        logger = wandb_logger(trainer)
        if logger is None:
            return
        if self.batch is None:
            self.batch = fixed_batch(trainer.val_dataloaders, self.num_samples)
            if self.batch is None:
                warnings.warn(
                    "LogPredictionSamples: the val dataloader does not yield (images, targets) "
                    "tensor batches; no sample table is logged",
                    stacklevel=2,
                )
                self.batch = (torch.empty(0), torch.empty(0))
        images, targets = self.batch
        if images.numel() == 0:
            return
        import wandb

        from hmc.explanations import to_display

        decoded = _predict(pl_module, images)
        if self._images is None:  # each stretched to its min..max: the normalisation is unknown
            self._images = [wandb.Image(a) for a in to_display(images)]
        h = pl_module.hierarchy
        nodes, probs = decoded.nodes.cpu(), decoded.probs.float().cpu()
        true_level = h.tensors().levels[targets.clamp_min(0)] - 1  # [B] 0-based target level
        hit = (nodes.gather(1, true_level[:, None]).squeeze(1) == targets) & (targets >= 0)
        columns = ["image", "true", "predicted", "correct"]
        cams: list[list[Any]] = [[] for _ in range(len(targets))]
        if self.cams:
            cams = cam_images(pl_module, images, self.cam_method)
            columns += [f"cam/{level}" for level in h.level_names]
        rows = []
        for image, t, path_cols, path_probs, ok, cam_row in zip(
            self._images, targets.tolist(), nodes.tolist(), probs.tolist(), hit.tolist(), cams,
            strict=True,
        ):  # fmt: skip
            true = " > ".join(h.name(n) for n in h.ancestors(t)) if t >= 0 else ""
            predicted = " > ".join(
                f"{h.name(c)} ({p:.2f})"
                for c, p in zip(path_cols, path_probs, strict=True)
                if c >= 0
            )
            rows.append([image, true, predicted, ok, *cam_row])
        table = wandb.Table(columns=columns, data=rows)
        logger.log_metrics({self.key: table}, step=trainer.global_step)


def cam_images(pl_module: Any, images: torch.Tensor, method: str = "gradcam") -> list[list[Any]]:
    """Per image, one ``wandb.Image`` per level: the CAM overlay (:func:`hmc.explain`) of the
    node the module's decoder chooses, captioned "<name> (<prob>)"; None below an early stop.
    ``pl_module`` is an :class:`hmc.training.HMCModule` (its ``model``, decoder and scores)."""
    import wandb

    from hmc.explanations import explain, overlay, to_display

    # explain() reads the module's decoder, its options and scores itself.
    e = explain(pl_module, images.to(pl_module.device), method=method)
    h = pl_module.hierarchy
    out = []
    for i, shown in enumerate(to_display(images)):
        one = e.for_image(i)
        out.append([
            wandb.Image(overlay(shown, m), caption=f"{h.name(c)} ({p:.2f})") if c >= 0 else None
            for m, c, p in zip(one.maps, one.nodes.tolist(), one.probs.tolist(), strict=True)
        ])  # fmt: skip
    return out


def fixed_batch(loaders: Any, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``n`` (image [B, C, H, W], target [B]) samples of the first loader on CPU: evenly spaced
    over a map-style dataset (so a class-sorted dataset still shows several classes), else the
    first batches. None if the loader does not yield image/target tensors. A loader of cached
    features (:class:`hmc.cache.CachedFeatures`) gives the images they were computed from."""
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
    if loader is None:
        return None
    dataset = loader.dataset
    if getattr(dataset, "image_dataset", None) is not None:  # cached features: the pictures
        dataset = dataset.image_dataset
    if not isinstance(dataset, torch.utils.data.IterableDataset) and len(dataset) > 0:
        idx = torch.linspace(0, len(dataset) - 1, min(n, len(dataset))).round().long().unique()
        batch = loader.collate_fn([dataset[int(i)] for i in idx])
    else:
        parts = []
        for b in loader:
            parts.append(b)
            if sum(len(p[1]) for p in parts) >= n:
                break
        batch = [torch.cat([p[i] for p in parts])[:n] for i in (0, 1)] if parts else None
    if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
        return None
    images, targets = batch[0], batch[1]
    if not (torch.is_tensor(images) and torch.is_tensor(targets) and images.ndim == 4):
        return None
    return images.cpu(), targets.long().cpu()


@torch.no_grad()
def _predict(pl_module: Any, images: torch.Tensor) -> Any:
    """Decoded (nodes [B, D], probs [B, D], node_probs [B, N]) for ``images``, in eval mode."""
    was_training = pl_module.training
    pl_module.eval()
    try:
        return pl_module.decode(pl_module(images.to(pl_module.device)))
    finally:
        pl_module.train(was_training)


class LogSummary(ModuleCallback):
    """At fit end and test end, write the final metrics to the W&B run summary: Lightning's
    callback metrics and the module's ``last_metrics`` (floats), plus ``epochs`` trained and,
    when the checkpoint callback monitors a metric, ``best/<monitor>`` and ``best/checkpoint``."""

    def on_fit_end(self, trainer: pl.Trainer, pl_module: EvaluatedModule) -> None:
        self._update(trainer, pl_module)

    def on_test_end(self, trainer: pl.Trainer, pl_module: EvaluatedModule) -> None:
        self._update(trainer, pl_module)

    def _update(self, trainer: pl.Trainer, pl_module: EvaluatedModule) -> None:
        logger = wandb_logger(trainer)
        if logger is None:
            return
        values: dict[str, Any] = {
            k: v.item() for k, v in trainer.callback_metrics.items() if v.numel() == 1
        }
        values.update(pl_module.last_metrics)
        if trainer.state.fn == TrainerFn.FITTING:
            values["epochs"] = trainer.current_epoch
            ckpt = trainer.checkpoint_callback
            if ckpt is not None and ckpt.monitor and ckpt.best_model_score is not None:
                values[f"best/{ckpt.monitor}"] = float(ckpt.best_model_score)
                values["best/checkpoint"] = str(ckpt.best_model_path)
        logger.experiment.summary.update(values)
