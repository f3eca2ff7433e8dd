"""Weights & Biases: a ``WandbLogger`` that goes offline by itself, and hierarchy artifacts.

- :class:`WandbLogger` is Lightning's ``WandbLogger`` (same arguments, YAML-configurable) that
  decides the W&B mode before ``wandb.init``: an explicit ``offline``/``mode``/``WANDB_MODE``
  wins; otherwise it runs online only if an API key is configured (``WANDB_API_KEY``,
  ``~/.netrc``, W&B settings files; checked without any network call) and the W&B host
  answers. Falling back to offline says so once, and ``finalize`` prints the
  ``wandb sync <run dir>`` command that uploads the run later.
- Hierarchy artifacts live in :mod:`hmc.training.artifacts` (no Lightning import).
- :func:`read_run_records` reads a run's ``.wandb`` transaction log (to inspect an offline run).
"""

from __future__ import annotations

import configparser
import logging
import netrc
import os
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pytorch_lightning.loggers import WandbLogger as _LightningWandbLogger
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only

__all__ = [
    "WandbLogger",
    "has_wandb_credentials",
    "read_run_records",
    "resolve_wandb_mode",
]

log = logging.getLogger(__name__)

# wandb >= 0.24 defaults to the CoreWeave Forge URL, which fronts api.wandb.ai; a key saved by
# `wandb login` may sit under either host in ~/.netrc.
_SAAS_HOSTS = ("api.wandb.ai", "api.forge.coreweave.com")
_MODES = ("online", "offline", "disabled", "shared", "dryrun", "run")
_AUTO_ONLINE = "an API key is configured"  # the reason when online was not asked for explicitly


# --------------------------------------------------------------------------- mode decision
def _wandb_base_url(settings: dict[str, str]) -> str:
    url = os.environ.get("WANDB_BASE_URL") or settings.get("base_url")
    if url:
        return url.rstrip("/")
    try:
        from wandb.sdk.lib.urls import DEFAULT_BASE_URL

        return DEFAULT_BASE_URL
    except ImportError:  # older wandb
        return "https://api.wandb.ai"


def _settings_files(root_dir: str | os.PathLike | None) -> list[Path]:
    """W&B's global then workspace settings files (later ones win), as wandb reads them."""
    config_dir = os.environ.get("WANDB_CONFIG_DIR")
    global_file = (
        Path(config_dir).expanduser() / "settings"
        if config_dir
        else Path("~/.config/wandb/settings").expanduser()
    )
    root = root_dir or os.environ.get("WANDB_DIR") or os.getcwd()
    return [global_file, Path(root).expanduser() / "wandb" / "settings"]


def _read_settings(root_dir: str | os.PathLike | None) -> dict[str, str]:
    """Keys of the ``[default]`` section of W&B's settings files, with their source file."""
    out: dict[str, str] = {}
    for path in _settings_files(root_dir):
        parser = configparser.ConfigParser()
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, OSError, UnicodeDecodeError):
            continue
        if parser.has_section("default"):
            for key, value in parser.items("default"):
                out[key] = value
                out[f"{key}.source"] = str(path)
    return out


def has_wandb_credentials(root_dir: str | os.PathLike | None = None) -> bool:
    """True if W&B would find an API key: ``WANDB_API_KEY`` (or an identity token file), an
    ``api_key`` in W&B's settings files, or a ``~/.netrc`` (``$NETRC``) entry for the W&B host.
    Makes no network call and does not check that the key is valid."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    settings = _read_settings(root_dir)
    if settings.get("api_key"):
        return True
    url = urlsplit(_wandb_base_url(settings))
    hosts = {url.netloc, url.hostname or ""}
    if (url.hostname or "") in _SAAS_HOSTS or (url.hostname or "").endswith("forge.coreweave.com"):
        hosts.update(_SAAS_HOSTS)
    path = os.environ.get("NETRC")
    candidates = [Path(path).expanduser()] if path else []
    candidates += [Path("~/.netrc").expanduser(), Path("~/_netrc").expanduser()]
    for candidate in candidates:
        if not candidate.is_file():
            continue
        try:
            entries = netrc.netrc(candidate)
        except (netrc.NetrcParseError, OSError):
            return False
        return any((entries.authenticators(h) or (None, None, None))[2] for h in hosts if h)
    return False


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the W&B host opens within ``timeout`` seconds, DNS lookup
    included (no request is sent). Behind a proxy we cannot tell cheaply, so we assume yes and
    let ``wandb.init`` decide."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    parts = urlsplit(url)
    if not parts.hostname:
        return False
    port = parts.port or (443 if parts.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((parts.hostname, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    # getaddrinfo ignores the socket timeout; a daemon thread bounds a hanging DNS lookup.
    thread = threading.Thread(target=probe, name="hmc-wandb-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def resolve_wandb_mode(
    offline: bool = False,
    mode: str | None = None,
    *,
    root_dir: str | os.PathLike | None = None,
    network_check: bool = True,
) -> tuple[str, str]:
    """Decide the W&B mode before ``wandb.init``. Returns ``(mode, reason)``.

    Precedence: ``offline=True``, then ``mode``, then ``$WANDB_MODE``, then ``mode`` in W&B's
    settings files (``wandb offline``); an explicit choice is never overridden. Otherwise the
    run is ``"offline"`` when no API key is configured or (``network_check``) the W&B host
    cannot be reached, else ``"online"``.
    """
    settings = _read_settings(root_dir)
    explicit: list[tuple[str | None, str]] = [
        ("offline" if offline else None, "offline=True was given"),
        (mode, f"mode={mode!r} was given"),
        (os.environ.get("WANDB_MODE") or None, f"WANDB_MODE={os.environ.get('WANDB_MODE')}"),
        (
            settings.get("mode") or None,
            f"mode = {settings.get('mode')} in {settings.get('mode.source')}",
        ),
    ]
    for value, reason in explicit:
        if value is None:
            continue
        value = value.strip().lower()
        if value not in _MODES:
            raise ValueError(f"Expected W&B mode to be one of {list(_MODES)}, but got {value!r}")
        value = {"dryrun": "offline", "run": "online"}.get(value, value)
        return value, reason
    if not has_wandb_credentials(root_dir):
        return "offline", "no W&B API key found (WANDB_API_KEY, ~/.netrc or `wandb login`)"
    base_url = _wandb_base_url(settings)
    if network_check and not _reachable(base_url):
        return "offline", f"cannot reach {base_url}"
    return "online", _AUTO_ONLINE


# ---------------------------------------------------------------------------------- logger
class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` that falls back to offline mode by itself.

    Arguments are those of ``pytorch_lightning.loggers.WandbLogger`` (other keyword arguments
    go to ``wandb.init``), plus:

    Args:
        mode: ``"online"``, ``"offline"`` or ``"disabled"``; default: decided by
            :func:`resolve_wandb_mode` when the run starts.
        network_check: Before going online, check that the W&B host accepts a TCP connection
            (a few seconds at most), so a machine without network goes offline at once.

    With no API key or no network the run is logged offline under
    ``<save_dir>/wandb/offline-run-*``: one log line says so, checkpoints are not uploaded
    (``log_model`` is switched off), and :meth:`finalize` prints ``wandb sync <run dir>``.
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
        mode: str | None = None,
        network_check: bool = True,
        **kwargs: Any,
    ) -> None:
        # Offline handling is ours: Lightning would refuse offline + log_model and set the
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
        self._requested_offline = offline
        self._requested_mode = mode
        self._network_check = network_check
        self._offline_reason: str | None = None
        self._dropped_log_model = False
        self._sync_hint_printed = False

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The ``wandb`` run, started on first access (rank zero only)."""
        import wandb

        if self._experiment is not None or wandb.run is not None:
            return super().experiment
        mode, reason = resolve_wandb_mode(
            self._requested_offline,
            self._requested_mode,
            root_dir=self._save_dir,
            network_check=self._network_check,
        )
        explicit_online = mode == "online" and reason != _AUTO_ONLINE
        self._set_mode(mode, reason)
        if self._wandb_init.get("resume") is None:
            self._wandb_init["resume"] = "allow"  # Lightning's default; LightningCLI passes None
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)  # wandb >= 0.2x warns about any value
        if self._save_dir:
            os.makedirs(self._save_dir, exist_ok=True)
        try:
            run = super().experiment
        except (wandb.errors.Error, OSError, TimeoutError) as err:
            if mode != "online" or explicit_online:
                raise
            self._experiment = None
            self._set_mode("offline", f"wandb.init failed ({type(err).__name__}: {err})")
            run = super().experiment
        if getattr(run, "offline", False):
            if self._offline_reason is None:  # wandb chose offline itself
                self._set_mode("offline", "wandb chose offline mode")
            extra = " (checkpoints stay local)" if self._dropped_log_model else ""
            sync_dir = os.path.abspath(run.sync_dir)
            log.warning(
                "W&B offline: %s. Logging to %s%s; upload later with `wandb sync %s`",
                self._offline_reason,
                sync_dir,
                extra,
                sync_dir,
            )
        # Set only now: Lightning's getter would export the deprecated WANDB_MODE=dryrun.
        self._offline = bool(getattr(run, "offline", False))
        return run

    def _set_mode(self, mode: str, reason: str) -> None:
        self._wandb_init["mode"] = mode
        self._offline_reason = reason if mode == "offline" else None
        if mode == "offline" and self._log_model:
            self._log_model = False  # checkpoints cannot be uploaded; do not copy them either
            self._dropped_log_model = True

    @property
    def offline_reason(self) -> str | None:
        """Why the run is offline, or None when it is online (or not started)."""
        return self._offline_reason

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        run = self._experiment
        if run is None or self._sync_hint_printed or not getattr(run, "offline", False):
            return
        self._sync_hint_printed = True
        log.warning(
            "W&B run %s was logged offline; upload it with: wandb sync %s",
            run.id,
            os.path.abspath(run.sync_dir),
        )


# --------------------------------------------------------------------------- offline runs
_LOG_HEADER = b":W&B"
_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_run_records(path: str | os.PathLike) -> Iterator[Any]:
    """The protobuf ``Record``s of a run's ``.wandb`` transaction log (``path``: the file or
    the run folder, e.g. ``wandb/offline-run-*``). For inspecting what ``wandb sync`` would
    upload; records are written in batches, so finish the run first for a complete log.

    The file is a leveldb-style log: a 7-byte header, then 32 KiB blocks of records, each with
    a 7-byte header (crc32 4, length 2, type 1) and chunks split across blocks.
    """
    from wandb.proto import wandb_internal_pb2

    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.wandb"))
        if len(files) != 1:
            raise FileNotFoundError(f"{path}: expected one .wandb file, found {len(files)}")
        path = files[0]
    data = path.read_bytes()
    if data[:4] != _LOG_HEADER:
        raise ValueError(f"{path}: not a W&B transaction log (header {data[:7]!r})")
    pos, chunks = 7, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if kind == 0 or pos + length > len(data):  # zero fill or a torn last record
            break
        payload, pos = data[pos : pos + length], pos + length
        if kind in (_FULL, _FIRST):
            chunks = payload
        else:
            chunks += payload
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            yield record
