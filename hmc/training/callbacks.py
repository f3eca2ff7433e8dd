"""Lightning callbacks: a per-level accuracy plot, and what hmc logs to Weights & Biases.

They read the :class:`hmc.training.HMCModule` contract: ``pl_module.hierarchy``,
``pl_module.model`` (returns ``HeadOutput``), and after each val/test epoch
``pl_module.last_metrics`` (``{"val/acc/<level>": float, ...}``) and
``pl_module.last_confusions`` (level name -> ``[(true id, predicted id, count), ...]``).

Every callback works with any logger or none: the W&B ones do nothing unless the trainer has
a ``WandbLogger`` (Lightning's or :class:`hmc.training.wandb.WandbLogger`), on rank zero.

- :class:`PerLevelAccuracyPlot`: ``per_level_accuracy.png`` + ``.csv`` in the run folder.
- :class:`LogHierarchy`: the hierarchy as a W&B artifact; per-level accuracy panels by epoch.
- :class:`LogConfusionMatrices`: per-level (true, predicted, count) tables, bounded.
- :class:`LogPredictionSamples`: a table of fixed validation images with true/predicted paths.
- :class:`LogSummary`: final metrics in the run summary at fit/test end.
- :class:`LoggerSaveConfigCallback`: LightningCLI's resolved config to every logger.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.cli import SaveConfigCallback
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.loggers import WandbLogger as _LightningWandbLogger
from pytorch_lightning.trainer.states import TrainerFn

__all__ = [
    "LogConfusionMatrices",
    "LogHierarchy",
    "LogPredictionSamples",
    "LogSummary",
    "LoggerSaveConfigCallback",
    "PerLevelAccuracyPlot",
    "run_dir",
    "wandb_run",
]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ helpers
def wandb_run(trainer: pl.Trainer) -> Any | None:
    """The W&B run of the trainer's first ``WandbLogger`` on rank zero, else None."""
    if not trainer.is_global_zero:
        return None
    for logger in trainer.loggers:
        if isinstance(logger, _LightningWandbLogger):
            run = logger.experiment
            return run if hasattr(run, "log") and hasattr(run, "summary") else None
    return None


def _wandb_logger(trainer: pl.Trainer) -> _LightningWandbLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, _LightningWandbLogger)), None)


def run_dir(trainer: pl.Trainer) -> Path:
    """The run folder: a CSV/TensorBoard logger's versioned ``log_dir``, else (W&B, no logger)
    ``trainer.default_root_dir``. Call on every rank (``log_dir`` broadcasts)."""
    if trainer.loggers and isinstance(trainer.loggers[0], (CSVLogger, TensorBoardLogger)):
        return Path(trainer.log_dir or trainer.default_root_dir)
    return Path(trainer.default_root_dir)


def _scalars(metrics: Any) -> dict[str, float]:
    out = {}
    for key, value in dict(metrics or {}).items():
        if torch.is_tensor(value):
            if value.numel() != 1:
                continue
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[str(key)] = float(value)
    return out


def _stage_metrics(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
    """The module's ``last_metrics`` if it has them, else Lightning's callback metrics."""
    last = getattr(pl_module, "last_metrics", None)
    return _scalars(last) if last else _scalars(trainer.callback_metrics)


def _level_names(pl_module: pl.LightningModule, keys: Any, prefix: str) -> list[str]:
    hierarchy = getattr(pl_module, "hierarchy", None)
    if hierarchy is not None:
        return list(hierarchy.level_names)
    names = [k[len(prefix) :] for k in keys if k.startswith(prefix)]
    return [n for n in names if "/" not in n and n != "mean"]


# --------------------------------------------------------------------------- accuracy plot
class PerLevelAccuracyPlot(Callback):
    """After each validation epoch of ``fit``, record the per-level accuracies
    (``<stage>/acc/<level>`` and ``<stage>/acc/mean``) and rewrite ``<filename>.png`` (one line
    per level, Agg backend) and ``<filename>.csv`` (epoch, step, one column per level) in
    ``dirpath`` or :func:`run_dir`. At fit end the plot is also logged to W&B if present.

    Args:
        dirpath: output folder; default :func:`run_dir`.
        filename: file stem of the PNG and CSV files.
        stage: metric prefix to read (``"val"``).
        log_image: log the final PNG to W&B as ``<stage>/per_level_accuracy``.
    """

    def __init__(
        self,
        dirpath: str | None = None,
        filename: str = "per_level_accuracy",
        stage: str = "val",
        log_image: bool = True,
    ) -> None:
        self.dirpath = dirpath
        self.filename = filename
        self.stage = stage
        self.log_image = log_image
        self.rows: list[dict[str, float]] = []
        self.columns: list[str] = []

    def _folder(self, trainer: pl.Trainer) -> Path:
        return Path(self.dirpath) if self.dirpath else run_dir(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        folder = self._folder(trainer)
        if not trainer.is_global_zero:
            return
        metrics = _stage_metrics(trainer, pl_module)
        prefix = f"{self.stage}/acc/"
        levels = _level_names(pl_module, metrics, prefix) + ["mean"]
        acc = {n: metrics[prefix + n] for n in levels if prefix + n in metrics}
        if not acc:
            log.debug("PerLevelAccuracyPlot: no %s* metrics this epoch", prefix)
            return
        self.columns = [n for n in levels if n in acc]
        row = {"epoch": float(trainer.current_epoch), "step": float(trainer.global_step), **acc}
        if self.rows and self.rows[-1]["step"] == row["step"]:
            self.rows[-1] = row  # validated twice at one step (e.g. resumed run)
        else:
            self.rows.append(row)
        self.write(folder)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        folder = self._folder(trainer)
        if not trainer.is_global_zero or not self.rows:
            return
        png = self.write(folder)
        logger = _wandb_logger(trainer)
        if self.log_image and wandb_run(trainer) is not None and logger is not None:
            logger.log_image(
                f"{self.stage}/per_level_accuracy", [str(png)], step=trainer.global_step
            )

    def write(self, folder: Path) -> Path:
        """Write the CSV and PNG into ``folder``; returns the PNG path."""
        folder.mkdir(parents=True, exist_ok=True)
        columns = ["epoch", "step", *self.columns]
        with open(folder / f"{self.filename}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            for row in self.rows:
                writer.writerow(
                    [int(row[c]) if c in ("epoch", "step") else row.get(c, "") for c in columns]
                )
        png = folder / f"{self.filename}.png"
        _plot(self.rows, self.columns, png, title=f"Per-level {self.stage} accuracy")
        return png

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "columns": self.columns}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict.get("rows", []))
        self.columns = list(state_dict.get("columns", []))


def _plot(rows: list[dict[str, float]], columns: list[str], path: Path, title: str) -> None:
    # Figure + Agg canvas directly: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in rows]
    by_step = len(set(epochs)) < len(epochs)  # several validations per epoch
    xs = [r["step"] if by_step else r["epoch"] + 1 for r in rows]
    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name in columns:
        ys = [r.get(name, math.nan) for r in rows]
        style = {"color": "black", "linestyle": "--"} if name == "mean" else {}
        ax.plot(xs, ys, marker="o", markersize=3, label=name, **style)
    values = [r[c] for r in rows for c in columns if c in r]
    if values and min(values) >= 0.0 and max(values) <= 1.0:
        ax.set_ylim(0.0, 1.0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step" if by_step else "epoch")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)


# ------------------------------------------------------------------------- W&B callbacks
class LogHierarchy(Callback):
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

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        run = wandb_run(trainer)
        hierarchy = getattr(pl_module, "hierarchy", None)
        if run is None or hierarchy is None or self.artifact is not None:
            return
        from hmc.training.artifacts import log_hierarchy_artifact

        self.artifact = log_hierarchy_artifact(run, hierarchy, self.name)
        run.config.update(
            {
                "hierarchy_info": {
                    "name": hierarchy.metadata.get("name"),
                    "fingerprint": hierarchy.fingerprint(),
                    "level_sizes": hierarchy.level_sizes(),
                    "artifact": self.artifact.name,
                }
            },
            allow_val_change=True,
        )
        if self.define_metrics:
            run.define_metric("epoch")
            for st in ("val", "test"):
                for level in [*hierarchy.level_names, "mean"]:
                    run.define_metric(f"{st}/acc/{level}", step_metric="epoch")


class LogConfusionMatrices(Callback):
    """After each validation (not sanity check) and test epoch, log
    ``pl_module.last_confusions`` per level as a W&B table ``<stage>/confusion/<level>`` with
    columns (true, predicted, count), largest counts first, at most ``max_rows`` rows. Levels
    with at most ``max_matrix_classes`` nodes also get a full confusion-matrix chart
    ``<stage>/confusion_matrix/<level>`` (zeros included). Big trees stay bounded: the rows
    come from the metric's own top-k and are cut again here.
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

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.current_epoch % self.every_n_epochs == 0:
            self._log(trainer, pl_module, "val")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module, "test")

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        run = wandb_run(trainer)
        confusions = getattr(pl_module, "last_confusions", None)
        if run is None or not confusions:
            return
        import wandb

        hierarchy = getattr(pl_module, "hierarchy", None)

        def label(node: Any) -> str:
            return hierarchy.name(node) if hierarchy is not None else str(node)

        payload: dict[str, Any] = {}
        for level, rows in confusions.items():
            rows = sorted(((t, p, int(c)) for t, p, c in rows), key=lambda r: -r[2])
            table = wandb.Table(
                columns=["true", "predicted", "count"],
                data=[[label(t), label(p), c] for t, p, c in rows[: self.max_rows]],
            )
            payload[f"{stage}/confusion/{level}"] = table
            if hierarchy is not None and level in hierarchy.level_names:
                nodes = hierarchy.level_nodes(level)
                if 0 < len(nodes) <= self.max_matrix_classes:
                    payload[f"{stage}/confusion_matrix/{level}"] = _matrix_chart(
                        hierarchy, nodes, rows, title=f"{stage} confusion: {level}"
                    )
        if payload:
            _wandb_logger(trainer).log_metrics(payload, step=trainer.global_step)


def _matrix_chart(hierarchy: Any, nodes: tuple[str, ...], rows: list, title: str) -> Any:
    """wandb.plot.confusion_matrix's chart, built from counts instead of per-sample labels."""
    import wandb

    names = [hierarchy.name(n) for n in nodes]
    labels = names if len(set(names)) == len(names) else list(nodes)  # ids if names collide
    index = {n: i for i, n in enumerate(nodes)}
    counts = torch.zeros(len(nodes), len(nodes), dtype=torch.long)
    for t, p, c in rows:
        if t in index and p in index:
            counts[index[t], index[p]] += c
    data = [
        [labels[i], labels[j], int(counts[i, j])]
        for i in range(len(nodes))
        for j in range(len(nodes))
    ]
    table = wandb.Table(columns=["Actual", "Predicted", "nPredictions"], data=data)
    fields = {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"}
    return wandb.plot_table(
        "wandb/confusion_matrix/v1", table, fields, string_fields={"title": title}
    )


class LogPredictionSamples(Callback):
    """At the end of validation, predict a fixed set of ``num_samples`` validation images
    (evenly spaced over the dataset, taken once) in eval mode without gradients, decode them
    with the module's decoder, and log a W&B table ``key`` with the image, the true path and the
    predicted path with per-level probabilities ("Birds (0.98) > Gulls (0.71)").
    """

    def __init__(self, num_samples: int = 16, every_n_epochs: int = 1, key: str = "val/samples"):
        if num_samples < 1 or every_n_epochs < 1:
            raise ValueError(
                "Expected `num_samples` >= 1 and `every_n_epochs` >= 1, but got "
                f"{num_samples} and {every_n_epochs}"
            )
        self.num_samples = num_samples
        self.every_n_epochs = every_n_epochs
        self.key = key
        self._batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self._images: list[Any] | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs:
            return
        run = wandb_run(trainer)
        hierarchy = getattr(pl_module, "hierarchy", None)
        if run is None or hierarchy is None:
            return
        if self._batch is None:
            self._batch = _fixed_batch(trainer.val_dataloaders, self.num_samples)
            if self._batch is None:
                warnings.warn(
                    "LogPredictionSamples: the val dataloader does not yield (images, targets) "
                    "tensor batches; no sample table is logged",
                    stacklevel=2,
                )
                self._batch = (torch.empty(0), torch.empty(0))
        images, targets = self._batch
        if images.numel() == 0:
            return
        decoded = _predict(pl_module, images)
        import wandb

        if self._images is None:
            self._images = [wandb.Image(a) for a in _to_uint8(images)]
        nodes, probs = decoded.nodes.cpu(), decoded.probs.float().cpu()
        levels = hierarchy.tensors().levels
        true_level = levels[targets.clamp_min(0)] - 1  # [B] 0-based level of each target
        hit = (nodes.gather(1, true_level[:, None]).squeeze(1) == targets) & (targets >= 0)
        rows = []
        for image, t, path_cols, path_probs, ok in zip(
            self._images,
            targets.tolist(),
            nodes.tolist(),
            probs.tolist(),
            hit.tolist(),
            strict=True,
        ):
            true = " > ".join(hierarchy.name(n) for n in hierarchy.ancestors(t)) if t >= 0 else ""
            predicted = " > ".join(
                f"{hierarchy.name(c)} ({p:.2f})"
                for c, p in zip(path_cols, path_probs, strict=True)
                if c >= 0
            )
            rows.append([image, true, predicted, ok])
        table = wandb.Table(columns=["image", "true", "predicted", "correct"], data=rows)
        _wandb_logger(trainer).log_metrics({self.key: table}, step=trainer.global_step)


def _fixed_batch(loaders: Any, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``n`` (image, target) samples of the first loader on CPU: evenly spaced over a map-style
    dataset (so a class-sorted dataset still shows several classes), else the first batches."""
    loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
    if isinstance(loaders, dict):
        loader = next(iter(loaders.values()), None)
    if loader is None:
        return None
    dataset = getattr(loader, "dataset", None)
    collate = getattr(loader, "collate_fn", None) or torch.utils.data.default_collate
    batch: Any = None
    if (
        dataset is not None
        and not isinstance(dataset, torch.utils.data.IterableDataset)
        and hasattr(dataset, "__len__")
        and len(dataset) > 0
    ):
        idx = torch.linspace(0, len(dataset) - 1, min(n, len(dataset))).round().long().unique()
        batch = collate([dataset[int(i)] for i in idx])
    else:
        parts = []
        for b in loader:
            parts.append(b)
            if sum(len(p[1]) for p in parts) >= n:
                break
        if parts and all(isinstance(p, (tuple, list)) and len(p) >= 2 for p in parts):
            batch = [torch.cat([p[0] for p in parts])[:n], torch.cat([p[1] for p in parts])[:n]]
    if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
        return None
    images, targets = batch[0], batch[1]
    if not (torch.is_tensor(images) and torch.is_tensor(targets) and images.ndim == 4):
        return None
    return images.cpu(), targets.long().cpu()


@torch.no_grad()
def _predict(pl_module: pl.LightningModule, images: torch.Tensor) -> Any:
    """Decoded (nodes [B, D], probs [B, D], node_probs [B, N]) for ``images``, in eval mode."""
    was_training = pl_module.training
    pl_module.eval()
    try:
        model = getattr(pl_module, "model", pl_module)
        out = model(images.to(pl_module.device))
        scores = getattr(out, "node_scores", out)
        decode = getattr(pl_module, "decode", None) or getattr(pl_module, "_decode", None)
        if decode is not None:
            return decode(scores)
        from hmc.decoding import decode as hmc_decode

        kind = getattr(getattr(model, "head", None), "score_kind", "states")
        return hmc_decode(pl_module.hierarchy, scores.float(), "argmax", kind=kind)
    finally:
        pl_module.train(was_training)


def _to_uint8(images: torch.Tensor) -> list[Any]:
    """[B, C, H, W] normalised floats -> B uint8 arrays [H, W, C] (or [H, W]), each stretched
    to its own min..max since the normalisation is not known here."""
    x = images.float()
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    x = ((x - lo) / (hi - lo).clamp_min(1e-8) * 255).round().to(torch.uint8)
    x = x.permute(0, 2, 3, 1)
    if x.shape[-1] == 1:
        x = x[..., 0]
    return list(x.numpy())


class LogSummary(Callback):
    """At fit end and test end, write the final metrics to the W&B run summary: the module's
    ``last_metrics`` and Lightning's callback metrics (floats), plus ``best/<monitor>`` and
    ``best/checkpoint`` from the checkpoint callback and ``epochs`` trained."""

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._update(trainer, pl_module)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._update(trainer, pl_module)

    def _update(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        run = wandb_run(trainer)
        if run is None:
            return
        values: dict[str, Any] = _scalars(trainer.callback_metrics)
        values.update(_scalars(getattr(pl_module, "last_metrics", None)))
        if trainer.state.fn == TrainerFn.FITTING:
            values["epochs"] = trainer.current_epoch
            ckpt = trainer.checkpoint_callback
            score = getattr(ckpt, "best_model_score", None)
            if score is not None and getattr(ckpt, "monitor", None):
                values[f"best/{ckpt.monitor}"] = float(score)
                values["best/checkpoint"] = str(ckpt.best_model_path)
        run.summary.update(values)


# ------------------------------------------------------------------------- resolved config
class LoggerSaveConfigCallback(SaveConfigCallback):
    """LightningCLI's ``SaveConfigCallback`` that also sends the resolved config (every
    argument, defaults included) to each logger with ``log_hyperparams``: W&B's run config,
    CSV/TensorBoard ``hparams.yaml``. With W&B the YAML is also saved in the run's files as
    ``lightning_config.yaml``. Use ``LightningCLI(save_config_callback=
    LoggerSaveConfigCallback)``."""

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # jsonargparse's skip_none
            text = self.parser.dump(self.config, format="json", skip_none=False)
        config = json.loads(text)
        config.pop("config", None)  # the paths of the --config files
        for logger in trainer.loggers:
            logger.log_hyperparams(config)
        run = wandb_run(trainer)
        if run is not None and getattr(run, "dir", None):
            path = os.path.join(run.dir, "lightning_config.yaml")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                self.parser.save(self.config, path, skip_none=False, overwrite=True)
