"""Test-wide settings: offline, one intra-op thread, a deterministic hypothesis profile."""

from __future__ import annotations

import os

# Before anything imports huggingface_hub / wandb: nothing may be downloaded in tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# Tiny models gain nothing from a second thread, and OpenMP threads that spin on busy cores
# (or beside the 2-process DDP tests) slow runs down many times over.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

torch.set_num_threads(1)

# "ci" (default): derandomized, so a failure reproduces; HYPOTHESIS_PROFILE=dev explores more.
settings.register_profile(
    "ci",
    max_examples=50,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
