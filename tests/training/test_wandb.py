"""hmc.training.wandb: offline fallback, hierarchy artifacts, the .wandb reader. No network: every
run is offline, and only the W&B public API's artifact fetch (a network call) is faked."""

from __future__ import annotations

import logging
import shutil
import socket
import time
from pathlib import Path

import pytest
import wandb

from hmc import Hierarchy, HierarchyError
from hmc.training.artifacts import (
    load_hierarchy_artifact,
    log_hierarchy_artifact,
    resolve_hierarchy,
)
from hmc.training.wandb import (
    WandbLogger,
    has_wandb_credentials,
    read_run_records,
    resolve_wandb_mode,
)

FAKE_KEY = "x" * 40  # never sent anywhere: wandb.Api is faked where it is used


@pytest.fixture
def wandb_home(tmp_path, monkeypatch):
    """A clean W&B environment in tmp_path: no API key, no .netrc, no settings, offline."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "NETRC", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / ".config" / "wandb"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(home / "data"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(home / "cache"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    wandb.finish()
    wandb.teardown()  # forget settings read from this test's environment


def finished_records(sync_dir: str | Path, timeout: float = 60.0) -> list:
    """Finish the run and read its records once wandb-core has flushed the final one."""
    wandb.finish()
    deadline = time.monotonic() + timeout
    while True:
        records = list(read_run_records(sync_dir))
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        if time.monotonic() > deadline:
            raise AssertionError(f"{sync_dir}: no exit record after {timeout}s")
        time.sleep(0.1)


def items(records: list, kind: str) -> dict[str, str]:
    """key -> JSON value of the history/config/summary items of ``records`` (last one wins)."""
    out = {}
    for r in records:
        if r.WhichOneof("record_type") == kind:
            payload = getattr(r, kind)
            for item in payload.item if kind == "history" else payload.update:
                out[item.key or "/".join(item.nested_key)] = item.value_json
    return out


def toy_hierarchy() -> Hierarchy:
    return Hierarchy.from_paths(
        [("animal", "cat"), ("animal", "dog"), ("vehicle", "car")],
        level_names=["coarse", "fine"],
        names={"cat": "Cat"},
        metadata={"name": "toy tree", "source": "tests"},
    )


# ------------------------------------------------------------------ mode and credentials
def test_no_credentials_means_offline(wandb_home, monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    assert not has_wandb_credentials()
    mode, reason = resolve_wandb_mode()
    assert mode == "offline"
    assert "no W&B API key" in reason


@pytest.mark.parametrize(
    ("kwargs", "env_mode", "settings_mode", "expected", "reason"),
    [
        ({"offline": True}, "online", None, "offline", "offline=True"),
        ({"mode": "disabled"}, "offline", None, "disabled", "mode='disabled'"),
        ({}, "dryrun", None, "offline", "WANDB_MODE=dryrun"),
        ({}, "online", None, "online", "WANDB_MODE=online"),  # honoured without a key
        ({}, None, "offline", "offline", "mode = offline in"),
    ],
)
def test_explicit_mode_wins(
    wandb_home, monkeypatch, kwargs, env_mode, settings_mode, expected, reason
):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    if env_mode is None:
        monkeypatch.delenv("WANDB_MODE")
    else:
        monkeypatch.setenv("WANDB_MODE", env_mode)
    if settings_mode:
        settings = wandb_home / "home" / ".config" / "wandb" / "settings"
        settings.parent.mkdir(parents=True)
        settings.write_text(f"[default]\nmode = {settings_mode}\n")
    mode, why = resolve_wandb_mode(network_check=False, **kwargs)
    assert (mode, reason in why) == (expected, True), why


def test_unknown_mode_is_an_error(wandb_home, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ValueError, match="Expected W&B mode to be one of"):
        resolve_wandb_mode()


def test_credentials_sources(wandb_home, monkeypatch):
    home = wandb_home / "home"
    assert not has_wandb_credentials()
    (home / ".netrc").write_text("machine example.org login user password secret\n")
    assert not has_wandb_credentials()  # not the W&B host
    (home / ".netrc").write_text(f"machine api.wandb.ai login user password {FAKE_KEY}\n")
    assert has_wandb_credentials()
    (home / ".netrc").unlink()
    custom = wandb_home / "netrc"
    custom.write_text(f"machine wandb.example.org login user password {FAKE_KEY}\n")
    monkeypatch.setenv("NETRC", str(custom))
    assert not has_wandb_credentials()
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert has_wandb_credentials()
    monkeypatch.delenv("NETRC")
    monkeypatch.delenv("WANDB_BASE_URL")
    settings = home / ".config" / "wandb" / "settings"
    settings.parent.mkdir(parents=True)
    settings.write_text(f"[default]\napi_key = {FAKE_KEY}\n")
    assert has_wandb_credentials()
    settings.unlink()
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    assert has_wandb_credentials()


def test_unreachable_host_means_offline(wandb_home, monkeypatch):
    with socket.socket() as s:  # a local port nobody listens on: refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    mode, reason = resolve_wandb_mode()
    assert mode == "offline"
    assert f"cannot reach http://127.0.0.1:{port}" in reason
    assert resolve_wandb_mode(network_check=False)[0] == "online"


# ------------------------------------------------------------------------------- logger
def _messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "hmc.training.wandb"]


def test_logger_goes_offline_once_and_prints_sync_command(wandb_home, monkeypatch, caplog):
    monkeypatch.delenv("WANDB_MODE")
    caplog.set_level(logging.INFO, logger="hmc.training.wandb")
    logger = WandbLogger(project="hmc-test", save_dir=str(wandb_home / "runs"), log_model=True)
    run = logger.experiment
    assert logger.experiment is run
    assert run.offline
    assert logger.offline_reason.startswith("no W&B API key")
    assert logger._log_model is False  # checkpoints are not copied for an offline run
    sync_dir = Path(run.sync_dir).resolve()
    assert sync_dir.is_dir() and (wandb_home / "runs").resolve() in sync_dir.parents
    (start,) = _messages(caplog)
    assert "W&B offline: no W&B API key" in start and "checkpoints stay local" in start
    logger.finalize("success")
    logger.finalize("success")  # fit then test: the hint is printed once per run
    messages = _messages(caplog)
    assert len(messages) == 2
    assert messages[1].endswith(f"wandb sync {sync_dir}")


def test_logger_falls_back_when_init_fails(wandb_home, monkeypatch, caplog):
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    real_init = wandb.init
    modes = []

    def init(**kwargs):
        modes.append(kwargs.get("mode"))
        if kwargs.get("mode") != "offline":  # stands in for the network call failing
            raise wandb.errors.CommError("network unreachable")
        return real_init(**kwargs)

    monkeypatch.setattr(wandb, "init", init)
    caplog.set_level(logging.WARNING, logger="hmc.training.wandb")
    logger = WandbLogger(project="hmc-test", save_dir=str(wandb_home), network_check=False)
    assert logger.experiment.offline
    assert modes == ["online", "offline"]
    (message,) = _messages(caplog)
    assert "wandb.init failed (CommError: network unreachable)" in message


def test_explicit_offline_is_announced_and_logs_metrics(wandb_home, caplog):
    caplog.set_level(logging.WARNING, logger="hmc.training.wandb")
    logger = WandbLogger(project="hmc-test", save_dir=str(wandb_home), offline=True)
    logger.log_metrics({"val/acc/fine": 0.25}, step=3)
    (message,) = _messages(caplog)
    assert "offline=True was given" in message
    logged = items(finished_records(logger.experiment.sync_dir), "history")
    assert logged["val/acc/fine"] == "0.25"
    assert logged["trainer/global_step"] == "3"


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


def test_hierarchy_artifact_round_trip(wandb_home, monkeypatch):
    h = toy_hierarchy()
    run = wandb.init(project="hmc-test", dir=str(wandb_home), mode="offline")
    logged = log_hierarchy_artifact(run, h)
    assert logged.type == "hierarchy"
    assert logged.name.startswith(f"toy-tree-{h.fingerprint()[:8]}")
    assert logged.metadata["fingerprint"] == h.fingerprint()
    assert logged.metadata["level_sizes"] == {"coarse": 2, "fine": 3}
    assert set(logged.manifest.entries) == {"hierarchy.tree"}

    records = finished_records(run.sync_dir)
    (art,) = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert (art.type, art.name) == ("hierarchy", f"toy-tree-{h.fingerprint()[:8]}")
    (entry,) = art.manifest.contents
    assert entry.path == "hierarchy.tree"
    assert Hierarchy.from_file(_copy_as_tree(entry.local_path, wandb_home)) == h

    # Loading back: only the network fetch is faked, download + parsing are the real code.
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setattr(wandb, "Api", _FakeApi)
    _FakeApi.artifacts = {"me/hmc-test/toy-tree:v0": _Downloadable(logged)}
    _FakeApi.refs = []
    loaded = resolve_hierarchy("wandb:me/hmc-test/toy-tree:v0")
    assert loaded == h
    assert loaded.name("cat") == "Cat"
    assert _FakeApi.refs == [("me/hmc-test/toy-tree:v0", "hierarchy")]
    root = wandb_home / "dl"
    assert load_hierarchy_artifact("me/hmc-test/toy-tree:v0", root=root) == h
    assert (root / "hierarchy.tree").is_file()
    with pytest.raises(HierarchyError, match="artifact me/hmc-test/toy-tree:latest not found"):
        load_hierarchy_artifact("me/hmc-test/toy-tree")  # no version means :latest


def _copy_as_tree(path: str, folder: Path) -> Path:
    # W&B stages files under random names; the reader picks the format by suffix.
    out = folder / "staged.tree"
    shutil.copyfile(path, out)
    return out


def test_load_hierarchy_artifact_errors(wandb_home, monkeypatch):
    with pytest.raises(HierarchyError, match="no W&B API key"):
        resolve_hierarchy("wandb:me/proj/tree:v0")
    with pytest.raises(HierarchyError, match="Expected a W&B artifact reference"):
        load_hierarchy_artifact("me/proj/")
    h = toy_hierarchy()
    run = wandb.init(project="hmc-test", dir=str(wandb_home), mode="offline")
    logged = log_hierarchy_artifact(run, h, name="tree")
    other = wandb_home / "notes.txt"
    other.write_text("not a tree\n")
    changed = wandb_home / "changed.tree"
    h.restrict(["cat", "car"]).save(changed)
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setattr(wandb, "Api", _FakeApi)
    _FakeApi.artifacts = {
        "a/b/model:v0": _Downloadable(logged, type="model"),
        "a/b/empty:v0": _Downloadable(logged, files={"notes.txt": other}),
        "a/b/changed:v0": _Downloadable(logged, files={"hierarchy.tree": changed}),
    }
    with pytest.raises(HierarchyError, match="has type 'model'; expected 'hierarchy'"):
        load_hierarchy_artifact("a/b/model:v0", root=wandb_home / "m")
    with pytest.raises(HierarchyError, match=r"one \.tree file, but has \['notes.txt'\]"):
        load_hierarchy_artifact("a/b/empty:v0", root=wandb_home / "e")
    with pytest.raises(HierarchyError, match="does not match the artifact's metadata"):
        load_hierarchy_artifact("a/b/changed:v0", root=wandb_home / "c")


def test_read_run_records_joins_records_across_blocks(wandb_home):
    big = "h" * 100_000  # spans several 32 KiB blocks: FIRST / MIDDLE / LAST chunks
    run = wandb.init(project="hmc-test", dir=str(wandb_home), mode="offline")
    run.config.update({"big": big, "small": 1})
    values = items(finished_records(run.sync_dir), "config")
    assert values["big"] == f'"{big}"'
    assert values["small"] == "1"
    with pytest.raises(ValueError, match="not a W&B transaction log"):
        bad = wandb_home / "bad.wandb"
        bad.write_bytes(b"nope")
        list(read_run_records(bad))
