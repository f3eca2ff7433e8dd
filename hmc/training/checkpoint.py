"""Lightning callbacks of the training loop: resumable checkpoints and the results table.

Configs name them `hmc.training.RunCheckpoint` and `hmc.training.ResultsTable`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from hmc.hierarchy import Hierarchy

__all__ = ["ResultsTable", "RunCheckpoint", "format_results"]


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint for resumable runs.

    - Its folder defaults to ``<trainer.default_root_dir>/checkpoints`` (not the logger's
      versioned folder), so a restarted ``hmc fit ... --ckpt_path last`` finds ``last.ckpt``.
    - With ``save_last``, ``last.ckpt`` is also refreshed at the end of every training epoch and
      of training (Lightning's step-triggered saving alone leaves it at the last multiple of
      ``every_n_train_steps``), and when training stops on SIGTERM or Ctrl-C, so a pre-empted
      job resumes from where it stopped (after SIGKILL: from the last periodic save).
    """

    def _default_dirpath(self, trainer: pl.Trainer) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._default_dirpath(trainer)
        super().setup(trainer, pl_module, stage)

    def _find_last_checkpoints(self, trainer: pl.Trainer) -> set[str]:
        # `ckpt_path="last"` is resolved before setup(), so the folder must be known here too.
        self._default_dirpath(trainer)
        return super()._find_last_checkpoints(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._refresh_last(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._refresh_last(trainer)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self.save_on_exception:
            super().on_exception(trainer, pl_module, exception)
        elif isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            self._refresh_last(trainer)

    def _refresh_last(self, trainer: pl.Trainer) -> None:
        if self.save_last and trainer.global_step > 0:
            if not self._should_skip_saving_checkpoint(trainer):
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


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


class ResultsTable(pl.Callback):
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

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if "test" in self.stages:
            self._report(trainer, pl_module, "test")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        fn = trainer.state.fn
        if trainer.sanity_checking:
            return
        if fn == "validate" and "validate" in self.stages:
            self._report(trainer, pl_module, "val")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if "fit" in self.stages and getattr(pl_module, "last_stage", None) == "val":
            self._report(trainer, pl_module, "val")

    @rank_zero_only
    def _report(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        metrics = dict(getattr(pl_module, "last_metrics", {}) or {})
        if not metrics:
            return
        print("\n" + format_results(metrics, pl_module.hierarchy, stage), flush=True)
        path = Path(trainer.default_root_dir) / f"{stage}_metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"stage": stage, "epoch": trainer.current_epoch, "step": trainer.global_step}
        path.write_text(json.dumps({**record, "metrics": metrics}, indent=1) + "\n")
