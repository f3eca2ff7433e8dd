"""The ``hmc`` command.

- ``hmc fit|validate|test --config configs/base.yaml --config configs/X.yaml [--model.head
  hrn --data.relabel.ratio 0.5]``: LightningCLI with :class:`hmc.training.HMCModule` and
  :class:`hmc.training.HMCDataModule`; the data module's hierarchy is linked to the model's.
  ``--print_config`` prints the full config.
- ``hmc predict --ckpt_path run/last.ckpt --data.predict_paths '[img.jpg, folder/]'
  --output preds.csv``: a light predictor built on :func:`hmc.load_model` (the checkpoint
  alone; no training config), one CSV/JSON row per image.
- ``hmc hierarchy show NAME|PATH`` and ``hmc hierarchy validate PATH``.
- ``hmc export`` (ONNX) and ``hmc explain`` (per-level CAM pictures).

Relative paths in a config file or on the command line resolve against the working directory
(as in LightningCLI), not against the config file's folder; ``hmc fit`` prints the absolute run
folder it writes to.

A user error (a bad value, a missing file, a wrong checkpoint) prints one ``error:`` line and
exits with code 1 (2 for a bad command line); ``--debug`` anywhere on the command line, or
``HMC_DEBUG=1``, shows the traceback instead. ``hmc`` itself imports neither Lightning nor timm
for ``--help``, ``--version`` or ``hmc hierarchy``.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # jsonargparse costs ~1 s of startup: imported by the commands that parse
    from jsonargparse import ArgumentParser

__all__ = [
    "did_you_mean",
    "explain_main",
    "hierarchy_main",
    "main",
    "predict_main",
    "run_lightning_cli",
]

DESCRIPTION = """\
Hierarchical multi-granularity classification.

  hmc fit --config configs/base.yaml --config configs/demo.yaml
                                            train (LightningCLI; also validate, test)
  hmc predict --ckpt_path run.ckpt --data.predict_paths '[a.jpg, folder/]' --output p.csv
  hmc explain --ckpt_path run.ckpt images/ --output explain/   per-level CAM pictures
  hmc export --ckpt_path run.ckpt --output model.onnx    one ONNX file, to predict without torch
  hmc predict --model model.onnx images/ --output p.csv  the same rows on ONNX Runtime
  hmc hierarchy show NAME|PATH              print a hierarchy with counts per level
  hmc hierarchy validate PATH               check a hierarchy file (exit 1 on error)
"""


def _config_action() -> Any:
    from jsonargparse import ActionConfigFile

    return ActionConfigFile


# ----------------------------------------------------------------------------- hints
_KEY_PATTERNS = (
    re.compile(r"does not accept option '([^']+)'"),
    re.compile(r"Option '([^']+)' is not accepted"),
    re.compile(r"unrecognized arguments: --?(\S+)"),
)


def _valid_keys(parser: Any) -> list[str]:
    """Dotted option names of ``parser`` and of its subcommand parsers (unprefixed)."""
    keys: list[str] = []
    for action in getattr(parser, "_actions", []):
        subparsers = getattr(action, "_name_parser_map", None)
        if subparsers:
            for sub in subparsers.values():
                keys.extend(_valid_keys(sub))
        elif action.dest and action.dest not in ("help", "config", "print_config"):
            keys.append(action.dest)
    return sorted(set(keys))


def did_you_mean(key: str, valid: Sequence[str]) -> str | None:
    """The valid key closest to a mistyped ``key`` (same group first), or None."""
    group = key.rsplit(".", 1)[0] if "." in key else ""
    same_group = [k for k in valid if group and k.startswith(group + ".")]
    for pool in (same_group, list(valid)):
        close = difflib.get_close_matches(key, pool, n=1, cutoff=0.6)
        if close:
            return close[0]
    return None


def _with_hint(message: str, parser: Any) -> str:
    for pattern in _KEY_PATTERNS:
        match = pattern.search(message)
        if match:
            key = match.group(1).split("=", 1)[0]
            close = did_you_mean(key, _valid_keys(parser))
            if close and close != key:
                return f"{message}. Did you mean '{close}'?"
    return message


class _HintMixin:
    def error(self, message: str, ex: Exception | None = None):  # type: ignore[override]
        parser = getattr(ex, "subcommand_parser", None) or self
        return super().error(_with_hint(str(message), parser), ex)  # type: ignore[misc]


@cache
def _raw_description_class():
    from jsonargparse import DefaultHelpFormatter

    class _RawDescription(DefaultHelpFormatter):
        """Keep the description's line breaks (the command list)."""

        def _fill_text(self, text: str, width: int, indent: str) -> str:
            return "".join(indent + line for line in text.splitlines(keepends=True))

    return _RawDescription


@cache
def _hint_parser_class():
    from jsonargparse import ArgumentParser

    class _HintParser(_HintMixin, ArgumentParser):
        """jsonargparse parser whose unknown-key errors name the closest valid key."""

    return _HintParser


def _HintParser(*args: Any, **kwargs: Any) -> ArgumentParser:  # noqa: N802 (a class, built lazily)
    return _hint_parser_class()(*args, **kwargs)


@cache
def _lightning_parser_class():
    from pytorch_lightning.cli import LightningArgumentParser

    class HMCArgumentParser(_HintMixin, LightningArgumentParser):
        """LightningArgumentParser whose unknown-key errors name the closest valid key."""

    return HMCArgumentParser


def __getattr__(name: str) -> Any:
    # Lightning is imported only for the LightningCLI subcommands.
    if name == "HMCArgumentParser":
        return _lightning_parser_class()
    if name == "HMCLightningCLI":
        return _cli_class()
    raise AttributeError(f"module 'hmc.cli' has no attribute {name!r}")


# ------------------------------------------------------------------------ LightningCLI
@cache
def _cli_class():
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.cli import LightningCLI

    class HMCLightningCLI(LightningCLI):
        """LightningCLI for HMCModule + HMCDataModule; the data's hierarchy feeds the model."""

        def add_arguments_to_parser(self, parser) -> None:
            from hmc.training.callbacks import StepCheckpoint

            parser.link_arguments("data.hierarchy", "model.hierarchy", apply_on="instantiate")
            # Lightning's ModelCheckpoint under its own `checkpoint:` key, so a recipe sets its
            # `checkpoint.dirpath` and configs/base.yaml the rest (configs merge by key).
            parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
            # A second one (hmc's StepCheckpoint) for periodic checkpoints inside epochs (one
            # ModelCheckpoint takes one trigger): `step_checkpoint.every_n_train_steps` or
            # `.train_time_interval`. It writes last.ckpt in the same folder (save_last), so
            # `--ckpt_path last` is the newest of the two; hmc leaves it out without a trigger.
            parser.add_lightning_class_args(StepCheckpoint, "step_checkpoint")
            parser.link_arguments("checkpoint.dirpath", "step_checkpoint.dirpath")
            # Read by LoggerSaveConfigCallback's run-folder guard (hmc.training.callbacks).
            parser.add_argument("--overwrite", type=bool, default=False,
                                help="fit: replace an earlier run in the run folder")  # fmt: skip

        def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Any:
            # Without a trigger Lightning would make step_checkpoint an epoch-end one: left out.
            if not _has_trigger(self._get(self.config, "step_checkpoint", default={})):
                step = self._get(self.config_init, "step_checkpoint", default=None)
                callbacks = [cb for cb in callbacks if cb is not step]
            return super()._instantiate_trainer(config, callbacks)

        def _parse_ckpt_path(self) -> None:
            # Lightning loads an explicit --ckpt_path here and lets its hyper-parameters
            # override the config: read it with hmc's checks first (a folder, a corrupt or
            # non-hmc file are clear errors), and refuse a resume whose model settings differ.
            stage = self.config.get("subcommand")
            given = self.config[stage].get("ckpt_path") if stage else None
            if given and given not in ("last", "best", "registry") and "://" not in str(given):
                from hmc.predict import read_checkpoint

                ckpt = read_checkpoint(given)
                if stage == "fit":
                    _check_resume_hparams(ckpt, self.config[stage]["model"], given)
            super()._parse_ckpt_path()

        def before_fit(self) -> None:
            ckpt = self._checked_checkpoint("fit")
            if ckpt is not None:
                path = self.config["fit"]["ckpt_path"]
                _check_resume_hparams(ckpt, self.config["fit"]["model"], path)
                _check_resume(ckpt, self.model, path)
            folder = os.path.abspath(self.trainer.default_root_dir)
            print(f"hmc fit: writing to {folder}", file=sys.stderr)

        def before_validate(self) -> None:
            self._checked_checkpoint("validate")

        def before_test(self) -> None:
            self._checked_checkpoint("test")

        def _checked_checkpoint(self, stage: str) -> dict[str, Any] | None:
            """The checkpoint ``--ckpt_path`` names, read and checked before Lightning runs; a
            validate/test without one would evaluate random weights."""
            from hmc.predict import read_checkpoint

            given = self.config[stage].get("ckpt_path")
            if given is None and stage == "fit":
                return None
            if given is None:
                raise ValueError(
                    f"hmc {stage} evaluates a trained model: give --ckpt_path FILE.ckpt, or "
                    "--ckpt_path last for the last checkpoint of this config's run folder"
                )
            if given == "last":
                found: set[str] = set()
                for cb in self.trainer.checkpoint_callbacks:
                    found |= cb._find_last_checkpoints(self.trainer)
                if not found:
                    if stage == "fit":  # Lightning's 'resume if there is one': a fresh start
                        return None
                    where = [
                        getattr(cb, "dirpath", None) for cb in self.trainer.checkpoint_callbacks
                    ]
                    raise ValueError(
                        f"hmc {stage} --ckpt_path last: no last checkpoint in {where} (set "
                        "checkpoint.dirpath to the run's checkpoint folder, or give the file)"
                    )
                given = max(found, key=os.path.getmtime)
            elif given in ("best", "registry") or str(given).startswith("hf://"):
                return None  # Lightning resolves (and reports) these itself
            return read_checkpoint(given)

        @staticmethod
        def subcommands() -> dict[str, set[str]]:
            # `hmc predict` is hmc.predict's checkpoint-only predictor (dispatched in main()).
            subcommands = dict(LightningCLI.subcommands())
            subcommands.pop("predict")
            return subcommands

    return HMCLightningCLI


def _has_trigger(checkpoint: Any) -> bool:
    """Whether a ModelCheckpoint config saves periodically (steps, time or epochs)."""
    return bool(
        checkpoint.get("every_n_train_steps")
        or checkpoint.get("train_time_interval") is not None
        or checkpoint.get("every_n_epochs")
    )


_NOT_SETTINGS = {"hierarchy", "pretrained", "checkpoint_path", "pretrained_cfg_overlay"}
"""Hyper-parameters a checkpoint rewrites for loading (weights are in it) or stores apart."""


def _plain_value(value: Any) -> Any:
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain_value(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain_value(v) for v in value]
    return value


def _check_resume_hparams(ckpt: dict[str, Any], model: Any, path: str) -> None:
    """A model setting in the config (``--model.*``) that differs from the checkpoint's
    hyper-parameters is an error naming it: Lightning would silently use the checkpoint's."""
    stored = ckpt.get("hyper_parameters") or {}
    current = _plain_value(model)
    differ = []
    for key in sorted(set(stored) & set(current) - _NOT_SETTINGS):
        a, b = _plain_value(stored[key]), current[key]
        if a != b and not (key.endswith("_kwargs") and not a and not b):
            differ.append(f"model.{key}: checkpoint {a!r}, config {b!r}")
    if differ:
        raise ValueError(
            f"cannot resume from {str(path)!r}: the model settings differ ({'; '.join(differ)}). "
            "A resumed run keeps its model; start a new run (without --ckpt_path) to change it"
        )


def _check_resume(ckpt: dict[str, Any], module: Any, path: str) -> None:
    """Resuming keeps the model: a setting that differs from the checkpoint's stored model
    config is an error naming it (Lightning would fail on the weights, or train another model)."""
    stored = ckpt["hmc"].get("model_config") or {}
    current = getattr(getattr(module, "model", None), "config", None) or {}
    ignored = {"hierarchy", "init_weights", "format"}  # the hierarchy is checked on load
    differ = [
        f"{k}: checkpoint {stored.get(k)!r}, config {current.get(k)!r}"
        for k in sorted(set(stored) | set(current))
        if k not in ignored and stored.get(k) != current.get(k)
    ]
    if differ:
        raise ValueError(
            f"cannot resume from {path!r}: the model settings differ ({'; '.join(differ)}). "
            "A resumed run keeps its model; start a new run (without --ckpt_path) to change it"
        )


def _drop_known_messages(record: Any) -> bool:
    """False for Lightning's litlogger tip and the "GPU/TPU available: False" lines of a
    CPU-only machine: they state nothing about the run."""
    msg = str(record.msg)
    return not msg.startswith(
        (
            "💡 Tip: For seamless cloud logging",
            "GPU available: False",
            "TPU available: False",
            # base.yaml names the plain ModelSummary on purpose (see _drop_zero_flops)
            "Trainer already configured with model summary callbacks",
        )
    )


def _drop_zero_flops(record: Any) -> bool:
    """The model summary without its "0  Total Flops" line (FLOPs are not counted here)."""
    if isinstance(record.msg, str):
        record.msg = re.sub(r"\n\s*0\s+Total Flops\s*$", "", record.msg)
    return True


_RICH_ZERO_FLOPS = re.compile(r"(\x1b\[[0-9;]*m)*Total FLOPs(\x1b\[[0-9;]*m)*: 0\s*")


def _rich_summary_without_zero_flops(summarize: Any) -> Any:
    """RichModelSummary.summarize (Lightning's default summary next to the Rich progress bar)
    without its "Total FLOPs: 0" line: it prints to the Rich console, not to a logger, so its
    output is captured and written back without that one line."""

    def quiet(*args: Any, **kwargs: Any) -> None:
        if kwargs.get("total_flops"):
            return summarize(*args, **kwargs)
        from rich import get_console

        console = get_console()
        with console.capture() as captured:
            summarize(*args, **kwargs)
        lines = captured.get().splitlines(keepends=True)
        console.file.write("".join(x for x in lines if not _RICH_ZERO_FLOPS.fullmatch(x)))
        console.file.flush()

    quiet.hmc_quiet = True  # type: ignore[attr-defined]
    return staticmethod(quiet)


def _quiet_lightning() -> None:
    """Filter exactly the known messages above, on the loggers (or console) that emit them."""
    import logging
    import warnings

    from pytorch_lightning.callbacks import RichModelSummary

    # torchdata's StatefulDataLoader calls a deprecated torch API in its constructor, and
    # Lightning's pytree helper another one.
    warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
    warnings.filterwarnings(
        "ignore",
        message="`isinstance\\(treespec, LeafSpec\\)` is deprecated",
        category=FutureWarning,
    )
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_drop_known_messages)  # a no-op when already there
    logging.getLogger("pytorch_lightning.callbacks.model_summary").addFilter(_drop_zero_flops)
    if not getattr(RichModelSummary.summarize, "hmc_quiet", False):
        RichModelSummary.summarize = _rich_summary_without_zero_flops(RichModelSummary.summarize)


def run_lightning_cli(args: Sequence[str] | None = None) -> Any:
    """Run ``hmc fit|validate|test`` (``args`` None: ``sys.argv``)."""
    from hmc.training.callbacks import LoggerSaveConfigCallback
    from hmc.training.datamodule import HMCDataModule
    from hmc.training.module import HMCModule

    _quiet_lightning()
    return _cli_class()(
        HMCModule,
        HMCDataModule,
        parser_class=_lightning_parser_class(),
        # Writes config.yaml to the run folder and sends the resolved config to every logger.
        save_config_callback=LoggerSaveConfigCallback,
        parser_kwargs={"description": DESCRIPTION, "formatter_class": _raw_description_class()},
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,  # HMCModule builds its own param groups/schedule
        # Hyper-parameters are the module's plain arguments (the hierarchy travels in
        # checkpoint["hmc"]), so checkpoints load with weights_only=True.
        load_from_checkpoint_support=False,
        args=args,
    )


# ---------------------------------------------------------------------------- hierarchy
def hierarchy_main(argv: Sequence[str]) -> int:
    """``hmc hierarchy show NAME|PATH`` / ``hmc hierarchy validate PATH``; returns the exit
    code."""
    from hmc.hierarchy import HierarchyError, list_hierarchies
    from hmc.training.artifacts import resolve_hierarchy

    parser = _HintParser(prog="hmc hierarchy", description="Inspect and check hierarchies.")
    sub = parser.add_subcommands(dest="command")
    show = _HintParser(description="Print a hierarchy: counts per level and the tree.")
    show.add_argument("name", help=f"a shipped name ({', '.join(list_hierarchies())}) or a path")
    show.add_argument("--max_children", type=int, default=8, help="children shown per node")
    sub.add_subcommand("show", show, help="print a hierarchy with counts per level")
    check = _HintParser(description="Check a hierarchy file; exit 1 with the error if invalid.")
    check.add_argument("path", help="a .tree/.csv/.json file, a NABirds folder, or a name")
    sub.add_subcommand("validate", check, help="check a hierarchy file")
    cfg = parser.parse_args(list(argv))
    command = cfg.command
    target = cfg[command].name if command == "show" else cfg[command].path
    try:
        h = resolve_hierarchy(target)
    except (HierarchyError, OSError, ValueError) as err:
        where = "" if str(target) in str(err) else f"{target}: "
        print(f"error: {where}{err}", file=sys.stderr)
        return 1
    if command == "show":
        print(h.describe(max_children=cfg.show.max_children))
        return 0
    sizes = ", ".join(f"{k}={v}" for k, v in h.level_sizes().items())
    depths = sorted({h.level(leaf) for leaf in h.leaves})
    print(f"OK: {target}")
    print(f"  {h.num_levels} levels ({sizes}); {h.num_nodes} nodes; {len(h.leaves)} leaves")
    print(f"  leaves at depth {depths}" + (" (ragged)" if len(depths) > 1 else ""))
    print(f"  fingerprint {h.fingerprint()}")
    return 0


# ------------------------------------------------------------------------------ predict
def _predict_parser() -> ArgumentParser:
    from hmc.decoding import DECODERS

    parser = _HintParser(
        prog="hmc predict",
        description=(
            "Predict image files/folders with a checkpoint (which carries the hierarchy, model "
            "and evaluation transform). Writes one row per image: the decoded path with names "
            "and per-level probabilities, as CSV or JSON."
        ),
    )
    parser.add_argument("-c", "--config", action=_config_action())
    parser.add_argument("--ckpt_path", type=str | None, default=None, help="an hmc .ckpt file")
    parser.add_argument(
        "--model", type=str | None, default=None, help="or an .onnx file from `hmc export`"
    )
    parser.add_argument(
        "--data.predict_paths",
        type=list[str] | str | None,
        default=None,
        help="image files and/or folders (searched recursively)",
    )
    parser.add_argument("paths", nargs="*", default=[], help="more image files or folders")
    parser.add_argument("--data.batch_size", type=int, default=32)
    parser.add_argument(
        "--output", type=str | None, default=None, help="CSV/JSON file (default stdout)"
    )
    parser.add_argument(
        "--format", type=Literal["csv", "json"] | None, default=None, help="default: by suffix"
    )
    parser.add_argument(
        "--decoder",
        type=str | None,
        default=None,
        help=f"one of {list(DECODERS)}; default: the checkpoint's",
    )
    parser.add_argument(
        "--decoder_kwargs",
        type=dict | None,
        default=None,
        help="the decoder's options, e.g. '{threshold: 0.7}'; default: the checkpoint's",
    )
    parser.add_argument("--hierarchy", type=str | None, default=None, help="check it matches")
    parser.add_argument("--device", type=str, default="cpu")
    parser.add_argument(
        "--on_bad_image",
        type=Literal["raise", "skip"],
        default="raise",
        help="skip: an unreadable image gets a row with an `error` column and empty predictions",
    )
    _add_report_arguments(parser)
    return parser


def predict_main(argv: Sequence[str]) -> int:
    """``hmc predict ...``; returns the exit code."""
    from hmc.predict import load_model

    cfg = _predict_parser().parse_args(list(argv))
    given = cfg.data.predict_paths
    paths = ([given] if isinstance(given, str) else list(given or [])) + list(cfg.paths)
    if not paths and not cfg.labels:
        print("error: give images with --data.predict_paths '[a.jpg, folder/]'", file=sys.stderr)
        return 2
    if (cfg.ckpt_path is None) == (cfg.model is None):
        print("error: give one of --ckpt_path run.ckpt or --model model.onnx", file=sys.stderr)
        return 2
    if cfg.model is not None:
        return _predict_onnx(cfg, paths)
    try:
        _check_device(cfg.device)
        predictor = load_model(
            cfg.ckpt_path,
            hierarchy=cfg.hierarchy,
            device=cfg.device,
            decoder=cfg.decoder,
            decoder_kwargs=cfg.decoder_kwargs,
        )
        labels = _report_labels(cfg, predictor)
        rows = predictor.predict_files(
            paths or list(labels), batch_size=cfg.data.batch_size, on_bad_image=cfg.on_bad_image
        )
        _write_report(cfg, predictor, rows, labels)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return _write_rows(cfg, rows)


def _write_rows(cfg: Any, rows: list[dict[str, Any]]) -> int:
    """Write ``hmc predict``'s rows and its summary lines (both predictors); exit code 0."""
    from hmc.files import print_summary, write_predictions

    write_predictions(rows, cfg.output, cfg.format)
    print_summary(rows, cfg.output, "hmc predict")
    return 0


def _check_device(device: str) -> None:
    """A CUDA device on a machine without one is a clear error (torch's is an assertion)."""
    if str(device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {device}: CUDA is not available on this machine (torch "
                f"{torch.__version__}, built {'with' if torch.version.cuda else 'without'} "
                "CUDA); use --device cpu"
            )


def _predict_onnx(cfg: Any, paths: list[str]) -> int:
    """``hmc predict --model model.onnx``: :class:`hmc.onnx_predictor.OnnxPredictor`."""
    from hmc.onnx_predictor import OnnxPredictor

    unsupported = [k for k in ("report", "labels") if cfg[k]]
    if cfg.device != "cpu" or unsupported:
        what = unsupported or [f"device {cfg.device!r}"]
        print(f"error: {what} need --ckpt_path (the ONNX predictor runs on CPU)", file=sys.stderr)
        return 2
    try:
        hierarchy = None
        if cfg.hierarchy is not None:
            from hmc.training.artifacts import resolve_hierarchy

            hierarchy = resolve_hierarchy(cfg.hierarchy)
        predictor = OnnxPredictor(
            cfg.model, hierarchy, decoder=cfg.decoder, decoder_kwargs=cfg.decoder_kwargs
        )
        rows = predictor.predict_files(paths, cfg.data.batch_size, on_bad_image=cfg.on_bad_image)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return _write_rows(cfg, rows)


# ------------------------------------------------------------------------------- export
def _export_parser() -> ArgumentParser:
    parser = _HintParser(
        prog="hmc export",
        description=(
            "Write a checkpoint as one ONNX file that holds the model and, in its metadata, the "
            "hierarchy, decoder, probability model, calibration and evaluation transform; "
            "`hmc predict --model` and hmc.onnx_predictor run it with numpy and onnxruntime "
            "alone (no torch). The graph outputs the head's raw outputs and the predictor "
            "decodes (any decoder); --decode_in_graph true exports the decoding too."
        ),
    )
    parser.add_argument("-c", "--config", action=_config_action())
    parser.add_argument("--ckpt_path", type=str, required=True, help="an hmc .ckpt file")
    parser.add_argument("--output", type=str, required=True, help="the .onnx file to write")
    parser.add_argument(
        "--decoder", type=str | None, default=None, help="default: the checkpoint's"
    )
    parser.add_argument("--decoder_kwargs", type=dict | None, default=None)
    parser.add_argument(
        "--decode_in_graph",
        type=bool,
        default=False,
        help="export the decoding too: outputs nodes and probabilities, decoder fixed",
    )
    return parser


def export_main(argv: Sequence[str]) -> int:
    """``hmc export ...``; returns the exit code."""
    from hmc.onnx_export import ExportError, export

    cfg = _export_parser().parse_args(list(argv))
    try:
        path = export(
            cfg.ckpt_path,
            cfg.output,
            decoder=cfg.decoder,
            decoder_kwargs=cfg.decoder_kwargs,
            decode_in_graph=cfg.decode_in_graph,
        )
    except (OSError, ValueError, ExportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"hmc export: {cfg.ckpt_path} -> {path}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- explain and report
def _explain_parser() -> ArgumentParser:
    from hmc.explanations import METHODS, TARGETS

    parser = _HintParser(
        prog="hmc explain",
        description=(
            "Class-activation maps per level: for each image, one PNG with the photo and one "
            "overlay per level, titled with the predicted name and its probability."
        ),
    )
    parser.add_argument("-c", "--config", action=_config_action())
    parser.add_argument("--ckpt_path", type=str, required=True, help="an hmc .ckpt file")
    parser.add_argument("paths", nargs="*", default=[], help="image files or folders")
    parser.add_argument("--output", type=str, default="explain", help="folder for the PNGs")
    parser.add_argument(
        "--levels", type=list[int | str] | None, default=None, help="level numbers or names"
    )
    parser.add_argument(
        "--node", type=str | None, default=None, help="explain this node (id or name) instead"
    )
    parser.add_argument("--method", type=str, default="gradcam", help=f"one of {list(METHODS)}")
    parser.add_argument("--target", type=str, default="score", help=f"one of {list(TARGETS)}")
    parser.add_argument(
        "--target_layer", type=str | None, default=None, help="module name; default automatic"
    )
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--device", type=str, default="cpu")
    return parser


def explain_main(argv: Sequence[str]) -> int:
    """``hmc explain --ckpt_path run.ckpt images/ --output explain/``; returns the exit code."""
    from hmc.explanations import write_explanations
    from hmc.predict import load_model

    cfg = _explain_parser().parse_args(list(argv))
    if not cfg.paths:
        print("error: give image files or folders to explain", file=sys.stderr)
        return 2
    levels = [int(v) if str(v).isdigit() else v for v in cfg.levels] if cfg.levels else None
    try:
        _check_device(cfg.device)
        predictor = load_model(cfg.ckpt_path, device=cfg.device)
        written = write_explanations(
            predictor,
            cfg.paths,
            cfg.output,
            batch_size=cfg.batch_size,
            method=cfg.method,
            levels=levels,
            node=cfg.node,
            target=cfg.target,
            target_layer=cfg.target_layer,
        )
    except (OSError, ValueError, KeyError) as err:  # UnknownLabelError is a KeyError
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"hmc explain: {len(written)} images -> {cfg.output}", file=sys.stderr)
    return 0


def _add_report_arguments(parser: ArgumentParser) -> None:
    parser.add_argument(
        "--report", type=str | None, default=None, help="also write an HTML gallery here"
    )
    parser.add_argument(
        "--labels",
        type=str | None,
        default=None,
        help="a path,label CSV: the report marks mistakes (its images are predicted if no "
        "other paths are given)",
    )
    parser.add_argument(
        "--report_cams", type=bool, default=False, help="add a per-level CAM strip to the report"
    )


def _report_labels(cfg: Any, predictor: Any) -> dict[str, int]:
    if not cfg.labels:
        return {}
    from hmc.report import read_labels

    return read_labels(predictor.hierarchy, cfg.labels)


def _write_report(cfg: Any, predictor: Any, rows: list[dict], labels: dict[str, int]) -> None:
    if not cfg.report:
        return
    from pathlib import Path

    from hmc.report import write_report

    cams = titles = None
    if cfg.report_cams:
        from hmc.explanations import explain_files, overlay, strip_titles

        explained = explain_files(predictor, [r["image"] for r in rows])
        cams = [[overlay(img, m) for m in e.maps] for _, img, e in explained]
        titles = [strip_titles(predictor.hierarchy, e) for _, _, e in explained]
    found = [labels.get(str(Path(r["image"]).resolve())) for r in rows] if cfg.labels else None
    write_report(predictor.hierarchy, rows, cfg.report, labels=found, cams=cams, cam_titles=titles)
    print(f"hmc predict: report -> {cfg.report}", file=sys.stderr)


# --------------------------------------------------------------------------------- main
COMMANDS = {
    "fit": "train a model (LightningCLI: --config configs/X.yaml, overrides as --model.head hrn)",
    "validate": "validate a checkpoint (--ckpt_path FILE|last)",
    "test": "test a checkpoint (--ckpt_path FILE|last)",
    "predict": "predict image files/folders with a checkpoint or an ONNX file",
    "explain": "per-level class-activation pictures",
    "export": "write a checkpoint as one ONNX file",
    "hierarchy": "show or validate a hierarchy",
}

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, LookupError, OSError)
"""Exceptions printed as one ``error:`` line (``--debug``: the traceback). Lightning's
MisconfigurationException is added by name (importing it would import Lightning)."""


def _usage() -> str:
    names = "|".join(COMMANDS)
    lines = [f"usage: hmc [-h] [--version] [--debug] {{{names}}} ...", "", DESCRIPTION]
    lines.append("commands:")
    lines += [f"  {name:<10} {text}" for name, text in COMMANDS.items()]
    lines += [
        "",
        "options:",
        "  -h, --help   this message; `hmc COMMAND --help` for a command's options",
        "  --version    print the version",
        "  --debug      show the traceback of an error (also HMC_DEBUG=1)",
    ]
    return "\n".join(lines)


def _is_user_error(err: BaseException) -> bool:
    names = {c.__name__ for c in type(err).__mro__}
    return isinstance(err, USER_ERRORS) or "MisconfigurationException" in names


def _message(err: BaseException) -> str:
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    if isinstance(err, (ValueError, OSError)) or "MisconfigurationException" in str(type(err)):
        return str(text)
    return f"{type(err).__name__}: {text}"


def _dispatch(args: list[str], from_sys_argv: bool) -> int:
    command = args[0]
    if command == "hierarchy":
        return hierarchy_main(args[1:])
    if command == "predict":
        return predict_main(args[1:])
    if command == "explain":
        return explain_main(args[1:])
    if command == "export":
        return export_main(args[1:])
    if from_sys_argv:
        # LightningCLI reads sys.argv itself (and DDP workers re-run the same argv).
        sys.argv = [sys.argv[0], *args]
        run_lightning_cli(None)
    else:
        run_lightning_cli(args)
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``hmc`` command; exits with the command's code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("HMC_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    if not args or args[0] in ("-h", "--help"):
        print(_usage(), file=sys.stdout if args else sys.stderr)
        sys.exit(0 if args else 2)
    if args[0] == "--version":
        from importlib.metadata import PackageNotFoundError, version

        try:  # the installed distribution's (the package face is not a layer cli imports)
            print(f"hmc {version('hmc')}")
        except PackageNotFoundError:
            print("hmc (not installed: no version metadata)")
        sys.exit(0)
    if args[0] not in COMMANDS:
        close = difflib.get_close_matches(args[0], list(COMMANDS), n=1, cutoff=0.5)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        print(
            f"error: unknown command {args[0]!r}.{hint} Commands: {', '.join(COMMANDS)} "
            "(hmc --help)",
            file=sys.stderr,
        )
        sys.exit(2)
    try:
        code = _dispatch(args, from_sys_argv=argv is None)
    except KeyboardInterrupt:
        print("hmc: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        if debug or not _is_user_error(err):
            raise
        print(f"error: {_message(err)}", file=sys.stderr)
        print("(hmc --debug ... or HMC_DEBUG=1 shows the traceback)", file=sys.stderr)
        sys.exit(1)
    sys.exit(code)


if __name__ == "__main__":
    main()
