"""A clean, offline W&B environment for the training-layer tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import wandb


def clean_wandb_env(mp: pytest.MonkeyPatch, root: Path) -> None:
    """No API key, no ~/.netrc, no W&B settings files, WANDB_MODE=offline, files under root."""
    home = root / "home"
    home.mkdir(parents=True, exist_ok=True)
    mp.setenv("HOME", str(home))
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "NETRC", "WANDB_BASE_URL"):
        mp.delenv(var, raising=False)
    mp.setenv("WANDB_CONFIG_DIR", str(home / ".config" / "wandb"))
    mp.setenv("WANDB_DATA_DIR", str(home / "data"))
    mp.setenv("WANDB_CACHE_DIR", str(home / "cache"))
    mp.setenv("WANDB_DIR", str(root))
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    mp.chdir(root)


@pytest.fixture
def wandb_home(tmp_path, monkeypatch):
    """tmp_path as a clean offline W&B environment (see :func:`clean_wandb_env`)."""
    clean_wandb_env(monkeypatch, tmp_path)
    yield tmp_path
    wandb.finish()
    wandb.teardown()  # forget settings read from this test's environment


@pytest.fixture(scope="module")
def wandb_module_home(tmp_path_factory):
    """:func:`wandb_home` shared by one test module (one W&B run for several tests)."""
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("wandb")
        clean_wandb_env(mp, root)
        yield root
        wandb.finish()
        wandb.teardown()
