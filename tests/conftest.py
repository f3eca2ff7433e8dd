"""Test-wide settings: offline, small thread pool, a deterministic hypothesis profile."""

from __future__ import annotations

import os

# Before anything imports huggingface_hub / wandb: nothing may be downloaded in tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

torch.set_num_threads(2)

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
