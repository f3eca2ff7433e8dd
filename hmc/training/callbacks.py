"""Lightning callbacks that work with any logger or none.

- :class:`ResultsTable`: a per-level results table after validation/test, and its JSON file.
- :class:`PerLevelAccuracyPlot`: ``per_level_accuracy.png`` + ``.csv`` in the run folder.
- :class:`LoggerSaveConfigCallback`: LightningCLI's resolved config to every logger.
- :class:`StepCheckpoint`: Lightning's ``ModelCheckpoint`` for periodic checkpoints inside
  epochs (``hmc fit``'s ``step_checkpoint:`` key).

Checkpointing is Lightning's own ``ModelCheckpoint``: ``hmc fit`` configures it under the
``checkpoint:`` key (``configs/base.yaml``). The W&B callbacks live in
:mod:`hmc.training.wandb_callbacks`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.cli import SaveConfigCallback
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from hmc.hierarchy import Hierarchy

__all__ = [
    "EvaluatedModule",
    "LoggerSaveConfigCallback",
    "ModuleCallback",
    "PerLevelAccuracyPlot",
    "ResultsTable",
    "StepCheckpoint",
    "earlier_run_files",
    "format_results",
    "run_dir",
]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- contract
@runtime_checkable
class EvaluatedModule(Protocol):
    """What hmc's callbacks read from the LightningModule; :class:`hmc.training.HMCModule` has it.

    ``module(images)`` gives a ``HeadOutput`` and ``decode(output)`` a ``Decoded`` (nodes
    [B, D], probs [B, D]). After each val/test epoch, ``last_metrics`` maps logged names to
    floats (``"val/acc/<level>"``), ``last_stage`` is ``"val"``/``"test"`` and
    ``last_confusions`` maps a level name to ``[(true id, predicted id, count), ...]``.
    """

    hierarchy: Hierarchy
    last_metrics: dict[str, float]
    last_confusions: dict[str, list[tuple[str, str, int]]]
    last_stage: str | None

    def decode(self, output: Any) -> Any: ...


class ModuleCallback(Callback):
    """A callback that reads :class:`EvaluatedModule`; ``setup`` says what a module lacks."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not isinstance(pl_module, EvaluatedModule):
            names = ("hierarchy", "last_metrics", "last_confusions", "last_stage", "decode")
            missing = [n for n in names if not hasattr(pl_module, n)]
            raise TypeError(
                f"{type(self).__name__} needs a LightningModule like hmc.training.HMCModule, "
                f"but {type(pl_module).__name__} has no {', '.join(missing)}"
            )


def run_dir(trainer: pl.Trainer) -> Path:
    """The run folder: a CSV/TensorBoard logger's versioned ``log_dir``, else (W&B, no logger)
    ``trainer.default_root_dir``. Call on every rank (``log_dir`` broadcasts)."""
    if trainer.loggers and isinstance(trainer.loggers[0], (CSVLogger, TensorBoardLogger)):
        return Path(trainer.log_dir or trainer.default_root_dir)
    return Path(trainer.default_root_dir)


# ------------------------------------------------------------------------ results table
# Per-level columns of the results table: metric group -> header; values are shares (x100).
_LEVEL_COLUMNS = (("acc", "acc %"), ("top5", "top-5 %"), ("ap", "AP %"), ("ece", "ECE %"))
_SUMMARY = (
    ("acc/mean", "mean level accuracy %", True),
    ("fpa", "full-path accuracy %", True),
    ("tice", "inconsistent paths (TICE) %", True),
    ("hf1", "hierarchical F1 %", True),
    ("mistake_severity", "mistake severity (levels)", False),
    ("ahd@1", "avg. hierarchical distance @1", False),
    ("loss", "loss", False),
)


def format_results(metrics: dict[str, float], hierarchy: Hierarchy, stage: str = "test") -> str:
    """A plain-text table: one row per level (nodes, accuracy, top-5, AP, ECE) and the
    path-level summary, from ``HMCModule.last_metrics``-style names (``"test/acc/species"``)."""
    pre = f"{stage}/"

    def cell(key: str, percent: bool) -> str:
        v = metrics.get(pre + key)
        if v is None:
            return "-"
        if math.isnan(v):
            return "nan"
        return f"{100 * v:.2f}" if percent else f"{v:.4f}"

    sizes = hierarchy.level_sizes()
    header = ["level", "nodes", *(h for _, h in _LEVEL_COLUMNS)]
    rows = [
        [name, str(sizes[name]), *(cell(f"{g}/{name}", True) for g, _ in _LEVEL_COLUMNS)]
        for name in hierarchy.level_names
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join

    def fmt(r: list[str]) -> str:
        return line(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )

    out = [f"{stage} results per level", fmt(header), line("-" * w for w in widths)]
    out += [fmt(r) for r in rows]
    summary = [(label, cell(key, pct)) for key, label, pct in _SUMMARY if pre + key in metrics]
    if summary:
        width = max(len(label) for label, _ in summary)
        out.append("")
        out += [f"{label.ljust(width)}  {value}" for label, value in summary]
    return "\n".join(out)


class ResultsTable(ModuleCallback):
    """Print a per-level results table after validation/test (rank zero) and write the
    metrics to ``<default_root_dir>/<stage>_metrics.json``.

    Args:
        stages: which evaluations to report: ``"test"``, ``"validate"`` (``hmc validate``)
            and/or ``"fit"`` (after the last validation of training).
    """

    def __init__(self, stages: list[str] | None = None) -> None:
        self.stages = list(stages or ["test", "validate"])
        for s in self.stages:
            if s not in ("test", "validate", "fit"):
                raise ValueError(
                    f"Expected argument `stages` to hold 'test', 'validate' or 'fit', but got {s!r}"
                )

    def on_test_end(self, trainer: pl.Trainer, pl_module: EvaluatedModule) -> None:
        if "test" in self.stages:
            self._report(trainer, pl_module, "test")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: EvaluatedModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING and "validate" in self.stages:
            self._report(trainer, pl_module, "val")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: EvaluatedModule) -> None:
        if "fit" in self.stages and pl_module.last_stage == "val":
            self._report(trainer, pl_module, "val")

    @rank_zero_only
    def _report(self, trainer: pl.Trainer, pl_module: EvaluatedModule, stage: str) -> None:
        metrics = dict(pl_module.last_metrics)
        if not metrics:
            return
        print("\n" + format_results(metrics, pl_module.hierarchy, stage), flush=True)
        path = Path(trainer.default_root_dir) / f"{stage}_metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"stage": stage, "epoch": trainer.current_epoch, "step": trainer.global_step}
        path.write_text(json.dumps({**record, "metrics": metrics}, indent=1) + "\n")


# --------------------------------------------------------------------------- accuracy plot
class PerLevelAccuracyPlot(ModuleCallback):
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

    def on_validation_end(self, trainer: pl.Trainer, pl_module: EvaluatedModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        folder = self._folder(trainer)
        if not trainer.is_global_zero:
            return
        prefix = f"{self.stage}/acc/"
        metrics = pl_module.last_metrics
        levels = [*pl_module.hierarchy.level_names, "mean"]
        acc = {n: metrics[prefix + n] for n in levels if prefix + n in metrics}
        if not acc:
            log.debug("PerLevelAccuracyPlot: no %s* metrics this epoch", prefix)
            return
        self.columns = list(acc)
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
        wandb = next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)
        if self.log_image and wandb is not None:
            wandb.log_image(
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


# ------------------------------------------------------------------------- checkpoints
class StepCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` for periodic checkpoints inside epochs
    (``every_n_train_steps`` or ``train_time_interval``), next to the epoch-end one. With
    ``save_last=True, save_top_k=0, enable_version_counter=False`` (``configs/base.yaml``) it
    overwrites the epoch-end checkpoint's ``<dirpath>/last.ckpt``, so ``ckpt_path="last"``
    resumes from the newest state.

    It does not save at an epoch's last batch: Lightning (2.6) resumes a checkpoint taken there,
    before the epoch's validation and end, as a finished epoch, so the resumed run would skip
    that validation, the epoch-end hooks (an epoch-wise LR step, the epoch-end checkpoint) and,
    with a restored loader position, the whole next epoch. Lightning's own SIGTERM stop avoids
    that point too; the epoch-end checkpoint is written a moment later."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args) -> None:
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            super().on_train_batch_end(trainer, pl_module, *args)


# ------------------------------------------------------------------------- resolved config
RUN_FILES = (
    "config.yaml",
    "per_level_accuracy.png",
    "per_level_accuracy.csv",
    "val_metrics.json",
    "test_metrics.json",
)
"""The files of a run in its folder (besides checkpoints) that a new fit would replace."""


def earlier_run_files(trainer: pl.Trainer) -> list[Path]:
    """The files of an earlier run that a new fit with ``trainer`` would overwrite: ``*.ckpt``
    in each ModelCheckpoint's ``dirpath``, and :data:`RUN_FILES` in the run folder
    (:func:`run_dir`) and ``default_root_dir``."""
    found: list[Path] = []
    for cb in trainer.checkpoint_callbacks:
        folder = getattr(cb, "dirpath", None)
        if folder and Path(folder).is_dir():
            found += sorted(Path(folder).glob("*.ckpt"))
    for folder in {run_dir(trainer), Path(trainer.default_root_dir)}:
        found += [folder / name for name in RUN_FILES if (folder / name).is_file()]
    return found


class LoggerSaveConfigCallback(SaveConfigCallback):
    """LightningCLI's ``SaveConfigCallback`` that also sends the resolved config (every
    argument, defaults included) to each logger with ``log_hyperparams``: W&B's run config,
    CSV/TensorBoard ``hparams.yaml``. With W&B the YAML is also saved in the run's files as
    ``lightning_config.yaml``. Use ``LightningCLI(save_config_callback=
    LoggerSaveConfigCallback)``.

    It also guards the run folder: a new ``fit`` (no ``--ckpt_path``) into a folder that holds
    an earlier run (a checkpoint, ``config.yaml``, plots or metrics files) stops with an error
    naming the folder and the ways out, ``--ckpt_path last`` or ``--overwrite true``, before
    anything is written. See :func:`earlier_run_files`."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # trainer.ckpt_path is set only later, at restore: the CLI's --ckpt_path says resume.
        resume = trainer.ckpt_path or self.config.get("ckpt_path")
        if stage == "fit" and not self.already_saved and not resume:
            overwrite = bool(self.config.get("overwrite", False))
            found = earlier_run_files(trainer)
            if found and not overwrite:
                folders = sorted({str(p.parent) for p in found})
                names = ", ".join(sorted({p.name for p in found}))
                raise RuntimeError(
                    f"{' and '.join(folders)} already hold a run ({names}); a new fit would "
                    "overwrite it. Resume it with --ckpt_path last, choose another folder "
                    "(trainer.default_root_dir, checkpoint.dirpath), or replace it with "
                    "--overwrite true"
                )
            if "overwrite" in self.config:
                self.config["overwrite"] = False  # a rerun of the saved config.yaml is guarded
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # jsonargparse's skip_none
            text = self.parser.dump(self.config, format="json", skip_none=False)
        config = json.loads(text)
        config.pop("config", None)  # the paths of the --config files
        for logger in trainer.loggers:
            logger.log_hyperparams(config)
            if isinstance(logger, WandbLogger):  # save_config runs on rank zero only
                path = Path(logger.experiment.dir) / "lightning_config.yaml"
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    self.parser.save(self.config, path, skip_none=False, overwrite=True)
