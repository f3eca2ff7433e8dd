"""Weights & Biases: a ``WandbLogger`` that never prompts and goes offline by itself.

:class:`WandbLogger` is Lightning's logger; it falls back to an offline run (said once) when W&B
has no API key or ``wandb.init`` cannot reach the server. What hmc logs to W&B is in
:mod:`hmc.training.wandb_callbacks`; hierarchy artifacts are in :mod:`hmc.training.artifacts`
(no Lightning import).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Literal

import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger as _LightningWandbLogger
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only

__all__ = ["WandbLogger", "wandb_logger"]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------- logger
class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` that never prompts and falls back to offline by itself.

    Arguments are those of ``pytorch_lightning.loggers.WandbLogger`` (other keyword arguments
    go to ``wandb.init``), plus:

    Args:
        mode: ``"online"``, ``"offline"`` or ``"disabled"``, as given to ``wandb.init``.
            Default: online when W&B has an API key (``wandb.login(prompt=False)``), else
            offline; ``offline=True`` and ``$WANDB_MODE`` are honoured as given.
        init_timeout: seconds ``wandb.init`` may take to reach the server before the run
            falls back to offline (``wandb.Settings(init_timeout=...)``).

    An offline run is logged under ``<save_dir>/wandb/offline-run-*``: one warning says why,
    checkpoints are not uploaded (``log_model`` is switched off), and :meth:`finalize` prints
    the ``wandb sync <run dir>`` command that uploads it later. W&B's own start and end lines,
    which say the same, are left out (``wandb.Settings(silent=True)`` for that run, when hmc
    chooses the settings); W&B's warnings and errors still print.
    """

    def __init__(
        self,
        name: str | None = None,
        save_dir: str = ".",
        version: str | None = None,
        offline: bool = False,
        dir: str | None = None,
        id: str | None = None,
        anonymous: bool | None = None,
        project: str | None = None,
        log_model: Literal["all"] | bool = False,
        experiment: Any = None,
        prefix: str = "",
        checkpoint_name: str | None = None,
        add_file_policy: Literal["mutable", "immutable"] = "mutable",
        mode: Literal["online", "offline", "disabled"] | None = None,
        init_timeout: float = 30.0,
        **kwargs: Any,
    ) -> None:
        # Offline is decided here: Lightning would refuse offline + log_model and set the
        # deprecated WANDB_MODE=dryrun for the whole process.
        super().__init__(
            name=name,
            save_dir=save_dir,
            version=version,
            offline=False,
            dir=dir,
            id=id,
            anonymous=anonymous,
            project=project or os.environ.get("WANDB_PROJECT") or "hmc",
            log_model=log_model,
            experiment=experiment,
            prefix=prefix,
            checkpoint_name=checkpoint_name,
            add_file_policy=add_file_policy,
            **kwargs,
        )
        self._mode = "offline" if offline else mode
        self._mode_reason = "offline=True was given" if offline else f"mode={mode!r} was given"
        self._init_timeout = init_timeout
        self._offline_reason: str | None = None
        self._sync_hint_printed = False

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The ``wandb`` run, started on first access (rank zero only)."""
        import wandb

        if self._experiment is not None or wandb.run is not None:
            return super().experiment
        init = self._wandb_init
        env = os.environ.get("WANDB_MODE")
        reason = f"WANDB_MODE={env}" if env else "wandb chose offline mode"
        # Chosen by us only when nobody chose: then a failing online start may go offline.
        auto = self._mode is None and not env
        if self._mode is not None:
            init["mode"] = self._mode
            reason = self._mode_reason
        elif auto and not wandb.login(prompt=False, verify=False):  # no key: no prompt either
            init["mode"] = "offline"
            reason = "no W&B API key (set WANDB_API_KEY or run `wandb login`)"
        init["resume"] = init.get("resume") or "allow"  # LightningCLI passes None
        if init.get("anonymous") is None:
            init.pop("anonymous", None)  # wandb >= 0.2x warns about any value
        own_settings = init.get("settings") is None  # LightningCLI passes every init argument
        if own_settings:
            offline = init.get("mode") == "offline" or (env or "").lower() in ("offline", "dryrun")
            init["settings"] = self._settings(offline)
        if self._save_dir:
            os.makedirs(self._save_dir, exist_ok=True)
        try:
            run = super().experiment
        except (wandb.errors.Error, OSError, TimeoutError) as err:
            if not auto or init.get("mode") == "offline":
                raise
            self._experiment = None
            init["mode"] = "offline"
            if own_settings:
                init["settings"] = self._settings(offline=True)
            reason = f"wandb.init failed ({type(err).__name__}: {err})"
            run = super().experiment
        if run.offline:
            self._offline_reason = reason
            # Checkpoints cannot be uploaded: do not copy them into the offline run either.
            dropped, self._log_model = bool(self._log_model), False
            sync_dir = os.path.abspath(run.sync_dir)
            log.warning(
                "W&B offline: %s. Logging to %s%s; upload later with `wandb sync %s`",
                reason,
                sync_dir,
                " (checkpoints stay local)" if dropped else "",
                sync_dir,
            )
        # Set only now: Lightning's getter would export the deprecated WANDB_MODE=dryrun.
        self._offline = bool(run.offline)
        return run

    def _settings(self, offline: bool) -> Any:
        import wandb

        # An offline run's own start and end lines (offline mode, where the run is saved, how
        # to sync it) say what hmc's notice says: silent for that run only. W&B's warnings and
        # errors (wandb.termwarn/termerror) still print; online runs keep their run links.
        return wandb.Settings(init_timeout=self._init_timeout, silent=offline)

    @property
    def offline_reason(self) -> str | None:
        """Why the run is offline, or None when it is online (or not started)."""
        return self._offline_reason

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        run = self._experiment
        if run is None or self._sync_hint_printed or not run.offline:
            return
        self._sync_hint_printed = True  # fit then test: one hint per run
        log.warning(
            "W&B run %s was logged offline; upload it with: wandb sync %s",
            run.id,
            os.path.abspath(run.sync_dir),
        )


def wandb_logger(trainer: pl.Trainer) -> _LightningWandbLogger | None:
    """The trainer's first W&B logger (Lightning's or :class:`WandbLogger`) on rank zero."""
    if not trainer.is_global_zero:
        return None
    return next((lg for lg in trainer.loggers if isinstance(lg, _LightningWandbLogger)), None)
