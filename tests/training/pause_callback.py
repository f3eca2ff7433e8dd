"""A test helper callback (not a test module): ``hmc fit`` stops at a known point and waits to be
killed, so that a test SIGKILLs it there and not at a racy moment."""

from __future__ import annotations

import time
from pathlib import Path

import pytorch_lightning as pl


class PauseAt(pl.Callback):
    """At the start of the training batch of global step ``step``, write ``<marker>.<rank>`` and
    sleep until killed. Does nothing in a run that finds its marker written (the resumed run)."""

    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, marker

    def on_train_batch_start(self, trainer: pl.Trainer, *args) -> None:
        marker = Path(f"{self.marker}.{trainer.global_rank}")
        if trainer.global_step != self.step or marker.exists():
            return
        marker.write_text(str(trainer.global_step))
        time.sleep(3600)
