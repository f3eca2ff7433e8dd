"""hmc.training.wandb's logger (offline fallback) and hmc.training.artifacts. No network: runs are
offline, the unreachable server is a closed local port, and only the W&B public API's artifact
fetch (a network call) is faked."""

from __future__ import annotations

import logging
import shutil
import socket
from pathlib import Path

import pytest
import wandb

from hmc import Hierarchy, HierarchyError
from hmc.training.artifacts import (
    load_hierarchy_artifact,
    log_hierarchy_artifact,
    resolve_hierarchy,
)
from hmc.training.wandb import WandbLogger

FAKE_KEY = "x" * 40  # never sent anywhere: the only server is a closed local port


def toy_hierarchy() -> Hierarchy:
    return Hierarchy.from_paths(
        [("animal", "cat"), ("animal", "dog"), ("vehicle", "car")],
        level_names=["coarse", "fine"],
        names={"cat": "Cat"},
        metadata={"name": "toy tree", "source": "tests"},
    )


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "hmc.training.wandb"]


def closed_port() -> int:
    with socket.socket() as s:  # a local port nobody listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------- logger
def test_no_api_key_goes_offline_said_once_with_the_sync_command(wandb_home, monkeypatch, caplog):
    monkeypatch.delenv("WANDB_MODE")
    caplog.set_level(logging.INFO, logger="hmc.training.wandb")
    logger = WandbLogger(project="hmc-test", save_dir=str(wandb_home / "runs"), log_model=True)
    run = logger.experiment
    assert logger.experiment is run
    assert run.offline
    assert logger.offline_reason.startswith("no W&B API key")
    assert logger._log_model is False  # checkpoints are not copied into an offline run
    sync_dir = Path(run.sync_dir).resolve()
    assert (wandb_home / "runs").resolve() in sync_dir.parents
    (start,) = messages(caplog)
    assert "W&B offline: no W&B API key" in start and "checkpoints stay local" in start
    logger.finalize("success")
    logger.finalize("success")  # fit then test: the hint is printed once per run
    assert messages(caplog)[1:] == [f"W&B run {run.id} was logged offline; upload it with: "
                                    f"wandb sync {sync_dir}"]  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "env_mode", "offline", "reason"),
    [
        ({"offline": True}, None, True, "offline=True was given"),
        ({"mode": "offline"}, "online", True, "mode='offline' was given"),
        ({}, "offline", True, "WANDB_MODE=offline"),
        ({"mode": "disabled"}, "offline", False, None),
    ],
)
def test_an_explicit_mode_is_used_as_given(
    wandb_home, monkeypatch, caplog, kwargs, env_mode, offline, reason
):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)  # a key alone would not choose online
    if env_mode is None:
        monkeypatch.delenv("WANDB_MODE")
    else:
        monkeypatch.setenv("WANDB_MODE", env_mode)
    caplog.set_level(logging.WARNING, logger="hmc.training.wandb")
    logger = WandbLogger(project="hmc-test", save_dir=str(wandb_home), **kwargs)
    run = logger.experiment
    assert (run.offline, run.disabled) == (offline, kwargs.get("mode") == "disabled")
    assert logger.offline_reason == reason
    assert len(messages(caplog)) == int(offline)


def test_an_unreachable_server_falls_back_to_offline(wandb_home, monkeypatch, caplog):
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    caplog.set_level(logging.WARNING, logger="hmc.training.wandb")
    logger = WandbLogger(project="hmc-test", save_dir=str(wandb_home), init_timeout=2)
    assert logger.experiment.offline
    (message,) = messages(caplog)
    assert "W&B offline: wandb.init failed (CommError: " in message
    assert "connection refused" in message


def test_an_explicit_online_mode_is_not_overridden(wandb_home, monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    logger = WandbLogger(
        project="hmc-test", save_dir=str(wandb_home), mode="online", init_timeout=2
    )
    with pytest.raises(wandb.errors.CommError, match="connection refused"):
        _ = logger.experiment


def test_offline_run_logs_metrics_at_the_trainer_step(wandb_home):
    logger = WandbLogger(project="hmc-test", save_dir=str(wandb_home), offline=True)
    logger.log_metrics({"val/acc/fine": 0.25}, step=3)
    summary = logger.experiment.summary  # the run's latest value of each logged key
    assert (summary["val/acc/fine"], summary["trainer/global_step"]) == (0.25, 3)


# ---------------------------------------------------------------------------- artifacts
class _FakeApi:
    """Stands in for ``wandb.Api`` (the network): hands out an artifact logged offline by this
    test, whose download copies the staged files like W&B's download would."""

    artifacts: dict[str, object] = {}
    refs: list[tuple[str, str | None]] = []

    def __init__(self, *args, **kwargs):
        pass

    def artifact(self, name, type=None):
        _FakeApi.refs.append((name, type))
        if name not in self.artifacts:
            raise wandb.errors.CommError(f"artifact {name} not found")
        return self.artifacts[name]


class _Downloadable:
    def __init__(self, logged, files=None, type=None, metadata=None):
        self.type = type or logged.type
        self.metadata = logged.metadata if metadata is None else metadata
        self._files = files or {
            e.path: Path(e.local_path) for e in logged.manifest.entries.values()
        }

    def download(self, root=None):
        folder = Path(root or Path.cwd() / "artifacts" / "fake")
        folder.mkdir(parents=True, exist_ok=True)
        for rel, src in self._files.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, folder / rel)
        return str(folder)


def log_offline(root: Path, h: Hierarchy, name: str | None = None):
    """Log ``h`` in an offline run, finish it and forget W&B's settings; the artifact."""
    run = wandb.init(project="hmc-test", dir=str(root), mode="offline")
    logged = log_hierarchy_artifact(run, h, name)
    wandb.finish()
    wandb.teardown()
    return logged


def with_key_and_fake_api(monkeypatch, artifacts: dict) -> None:
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setattr(wandb, "Api", _FakeApi)
    _FakeApi.artifacts, _FakeApi.refs = artifacts, []


def test_hierarchy_artifact_round_trip(wandb_home, monkeypatch):
    h = toy_hierarchy()
    logged = log_offline(wandb_home, h)
    assert logged.type == "hierarchy"
    assert logged.name.startswith(f"toy-tree-{h.fingerprint()[:8]}")
    assert logged.metadata["fingerprint"] == h.fingerprint()
    assert logged.metadata["level_sizes"] == {"coarse": 2, "fine": 3}
    (entry,) = logged.manifest.entries.values()
    assert entry.path == "hierarchy.tree"
    staged = shutil.copyfile(entry.local_path, wandb_home / "staged.tree")  # stored by suffix
    assert Hierarchy.from_file(staged) == h

    # Loading back: only the network fetch is faked, download + parsing are the real code.
    with_key_and_fake_api(monkeypatch, {"me/hmc-test/toy-tree:v0": _Downloadable(logged)})
    loaded = resolve_hierarchy("wandb:me/hmc-test/toy-tree:v0")
    assert loaded == h
    assert loaded.name("cat") == "Cat"
    assert _FakeApi.refs == [("me/hmc-test/toy-tree:v0", "hierarchy")]
    root = wandb_home / "dl"
    assert load_hierarchy_artifact("me/hmc-test/toy-tree:v0", root=root) == h
    assert (root / "hierarchy.tree").is_file()
    with pytest.raises(HierarchyError, match="artifact me/hmc-test/toy-tree:latest not found"):
        load_hierarchy_artifact("me/hmc-test/toy-tree")  # no version means :latest


def test_no_api_key_is_a_clear_error(wandb_home, monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    with pytest.raises(HierarchyError, match="no W&B API key.*wandb artifact get me/p/tree:v0"):
        resolve_hierarchy("wandb:me/p/tree:v0")


def test_an_offline_run_cannot_fetch_artifacts(wandb_home, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    wandb.init(project="hmc-test", dir=str(wandb_home), mode="offline")
    with pytest.raises(HierarchyError, match="the W&B run is offline"):
        load_hierarchy_artifact("me/p/tree:v0")


def test_load_hierarchy_artifact_errors(wandb_home, monkeypatch):
    with pytest.raises(HierarchyError, match="Expected a W&B artifact reference"):
        load_hierarchy_artifact("me/proj/")
    h = toy_hierarchy()
    logged = log_offline(wandb_home, h, name="tree")
    other = wandb_home / "notes.txt"
    other.write_text("not a tree\n")
    changed = wandb_home / "changed.tree"
    h.restrict(["cat", "car"]).save(changed)
    artifacts = {
        "a/b/model:v0": _Downloadable(logged, type="model"),
        "a/b/empty:v0": _Downloadable(logged, files={"notes.txt": other}),
        "a/b/changed:v0": _Downloadable(logged, files={"hierarchy.tree": changed}),
    }
    with_key_and_fake_api(monkeypatch, artifacts)
    with pytest.raises(HierarchyError, match="has type 'model'; expected 'hierarchy'"):
        load_hierarchy_artifact("a/b/model:v0", root=wandb_home / "m")
    with pytest.raises(HierarchyError, match=r"one \.tree file, but has \['notes.txt'\]"):
        load_hierarchy_artifact("a/b/empty:v0", root=wandb_home / "e")
    with pytest.raises(HierarchyError, match="does not match the artifact's metadata"):
        load_hierarchy_artifact("a/b/changed:v0", root=wandb_home / "c")
