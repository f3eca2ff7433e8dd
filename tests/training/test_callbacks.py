"""hmc.training.callbacks and hmc.training.wandb_callbacks on tiny real HMCModule runs: with an
offline W&B run (checked through the run's summary, config and media files), with CSVLogger, and
with no logger. One test per callback."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import wandb
import yaml
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.loggers import CSVLogger
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from hmc import Hierarchy
from hmc.training.callbacks import (
    LoggerSaveConfigCallback,
    PerLevelAccuracyPlot,
    ResultsTable,
    run_dir,
)
from hmc.training.module import HMCModule
from hmc.training.wandb import WandbLogger
from hmc.training.wandb_callbacks import (
    LogConfusionMatrices,
    LogHierarchy,
    LogPredictionSamples,
    LogSummary,
    fixed_batch,
)

TINY_HEAD = {"mid_channels": 8, "block_channels": 16, "hidden": 16, "feature_dim": 8}


def toy() -> Hierarchy:
    return Hierarchy.from_paths(
        [("animal", "cat"), ("animal", "dog"), ("vehicle", "car"), ("vehicle", "bus")],
        level_names=["coarse", "fine"],
        metadata={"name": "toy"},
    )


def toy_data(n: int = 16, seed: int = 0) -> TensorDataset:
    h = toy()
    g = torch.Generator().manual_seed(seed)
    leaves = h.indices(h.leaves)
    targets = leaves[torch.arange(n) % len(leaves)]
    targets[1] = h.index("vehicle")  # a coarse label
    return TensorDataset(torch.randn(n, 3, 16, 16, generator=g), targets)


def module(hierarchy: str | Hierarchy | None = None, lr: float = 1e-3) -> HMCModule:
    return HMCModule(
        hierarchy or toy(), backbone="test_resnet", head_kwargs=TINY_HEAD, optimizer="adamw", lr=lr
    )


class ToyData(pl.LightningDataModule):
    def __init__(self, batch_size: int = 4) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self):
        return DataLoader(toy_data(), batch_size=self.batch_size)

    def val_dataloader(self):
        return DataLoader(toy_data(12, seed=1), batch_size=self.batch_size)


def trainer(root: Path, logger, callbacks, epochs: int = 2) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        limit_train_batches=2,
        limit_val_batches=3,
        num_sanity_val_steps=1,
        log_every_n_steps=1,
        accelerator="cpu",
        logger=logger,
        callbacks=callbacks,
        default_root_dir=str(root),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def media(run_dir: Path, kind: str, key: str) -> list[Path]:
    """The files a W&B run logged under ``key`` (``kind``: "table" or "images"), by step."""
    files = (run_dir / "media" / kind).glob(f"{key}_*")
    return sorted(files, key=lambda p: int(p.name[len(Path(key).name) + 1 :].split("_")[0]))


# ------------------------------------------------------- one W&B run, every W&B callback
@pytest.fixture(scope="module")
def wandb_fit(wandb_module_home):
    """fit (2 epochs) then test one module with every callback and an offline W&B run."""
    callbacks = {
        "plot": PerLevelAccuracyPlot(),
        "hierarchy": LogHierarchy(),
        "confusion": LogConfusionMatrices(max_rows=2, max_matrix_classes=2),
        "samples": LogPredictionSamples(num_samples=5),
        "log_summary": LogSummary(),
    }
    m = module()
    logger = WandbLogger(project="hmc-test", save_dir=str(wandb_module_home))
    root = wandb_module_home / "run"
    fit = trainer(root, logger, list(callbacks.values()))
    data = ToyData()
    fit.fit(m, data)
    val = dict(m.last_metrics)
    fit.test(m, data.val_dataloader(), verbose=False)
    run = logger.experiment
    # What the run holds (its summary and config are read from the live run), then end it.
    state = {"dir": Path(run.dir), "summary": dict(run.summary), "config": dict(run.config)}
    wandb.finish()
    return {**state, "module": m, "root": root, "val": val, **callbacks}


def test_per_level_accuracy_plot_logs_its_image_to_wandb(wandb_fit):
    rows = read_csv(wandb_fit["root"] / "per_level_accuracy.csv")
    assert [r["epoch"] for r in rows] == ["0", "1"]  # not the sanity check
    assert float(rows[-1]["fine"]) == pytest.approx(wandb_fit["val"]["val/acc/fine"])
    (image,) = media(wandb_fit["dir"], "images", "val/per_level_accuracy")  # at fit end only
    assert image.suffix == ".png" and image.stat().st_size > 1000


def test_log_hierarchy_logs_the_artifact_and_the_run_config(wandb_fit):
    artifact, h = wandb_fit["hierarchy"].artifact, wandb_fit["module"].hierarchy
    assert artifact.type == "hierarchy"
    assert artifact.name.startswith(f"toy-{h.fingerprint()[:8]}")
    info = wandb_fit["config"]["hierarchy_info"]
    assert info["fingerprint"] == h.fingerprint()
    assert info["level_sizes"] == {"coarse": 2, "fine": 4}


def test_log_confusion_matrices_logs_bounded_sorted_tables(wandb_fit):
    run = wandb_fit["dir"]
    val = media(run, "table", "val/confusion/fine")
    assert len(val) == 2  # one per validation epoch
    table = json.loads(val[-1].read_text())
    assert table["columns"] == ["true", "predicted", "count"]
    counts = [row[2] for row in table["data"]]
    assert 0 < len(counts) <= 2 and counts == sorted(counts, reverse=True)  # max_rows=2
    assert media(run, "table", "test/confusion/coarse")
    assert media(run, "table", "val/confusion_matrix/coarse_table")  # 2 nodes <= 2
    assert not media(run, "table", "val/confusion_matrix/fine_table")  # 4 nodes > 2


def test_log_prediction_samples_logs_true_and_predicted_paths(wandb_fit):
    tables = media(wandb_fit["dir"], "table", "val/samples")
    assert len(tables) == 2  # one per validation epoch
    table = json.loads(tables[-1].read_text())
    assert table["columns"] == ["image", "true", "predicted", "correct"]
    images, targets = wandb_fit["samples"].batch
    assert images.shape[0] == len(table["data"]) == 5
    h = wandb_fit["module"].hierarchy
    expected = [" > ".join(h.name(n) for n in h.ancestors(t)) for t in targets.tolist()]
    assert [row[1] for row in table["data"]] == expected
    assert {row[0] for row in table["data"]} == {"Image"}  # images go to a run_table artifact
    assert all(" (" in row[2] and row[2].count(" > ") == 1 for row in table["data"])


def test_log_summary_writes_the_final_metrics(wandb_fit):
    summary, m = wandb_fit["summary"], wandb_fit["module"]
    assert summary["test/acc/fine"] == pytest.approx(m.last_metrics["test/acc/fine"])
    assert summary["val/acc/fine"] == pytest.approx(wandb_fit["val"]["val/acc/fine"])
    assert summary["epochs"] == 2


# ---------------------------------------------------------------- other loggers, no logger
@pytest.mark.parametrize("use_csv", [True, False], ids=["csv", "no-logger"])
def test_per_level_accuracy_plot_writes_csv_and_png_to_the_run_folder(tmp_path, use_csv):
    logger = CSVLogger(str(tmp_path / "logs")) if use_csv else False
    m = module()
    fit = trainer(tmp_path, logger, [PerLevelAccuracyPlot()], epochs=3)
    fit.fit(m, ToyData())
    folder = tmp_path / "logs" / "lightning_logs" / "version_0" if use_csv else tmp_path
    assert run_dir(fit) == folder
    rows = read_csv(folder / "per_level_accuracy.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert list(rows[0]) == ["epoch", "step", "coarse", "fine", "mean"]
    assert float(rows[-1]["mean"]) == pytest.approx(m.last_metrics["val/acc/mean"])
    assert (folder / "per_level_accuracy.png").stat().st_size > 1000


def test_wandb_callbacks_do_nothing_without_a_wandb_logger(tmp_path):
    callbacks = [LogHierarchy(), LogConfusionMatrices(), LogPredictionSamples(), LogSummary()]
    trainer(tmp_path, CSVLogger(str(tmp_path)), callbacks, epochs=1).fit(module(), ToyData())
    assert callbacks[0].artifact is None and callbacks[2].batch is None
    assert wandb.run is None


def test_plot_state_survives_a_checkpoint(tmp_path):
    plot = PerLevelAccuracyPlot(dirpath=str(tmp_path / "out"), filename="acc")
    trainer(tmp_path, False, [plot], epochs=2).fit(module(), ToyData())
    restored = PerLevelAccuracyPlot()
    restored.load_state_dict(plot.state_dict())
    assert restored.rows == plot.rows and len(restored.rows) == 2
    restored.write(tmp_path / "again")
    assert read_csv(tmp_path / "again" / "per_level_accuracy.csv") == read_csv(
        tmp_path / "out" / "acc.csv"
    )


def test_callbacks_name_what_a_module_lacks(tmp_path):
    class Plain(pl.LightningModule):
        hierarchy = toy()

    missing = "Plain has no last_metrics, last_confusions, last_stage, decode"
    with pytest.raises(
        TypeError, match=f"needs a LightningModule like hmc.training.HMCModule.*{missing}"
    ):
        ResultsTable().setup(trainer(tmp_path, False, []), Plain(), "fit")  # as Trainer.fit does


# --------------------------------------------------------------------------- the config
@pytest.mark.parametrize("use_wandb", [True, False], ids=["wandb", "csv"])
def test_resolved_config_reaches_the_logger(wandb_home, use_wandb):
    tree = wandb_home / "toy.tree"
    toy().save(tree)
    if use_wandb:  # the way configs/base.yaml wires W&B: logger and callbacks from YAML
        config = wandb_home / "wandb.yaml"
        config.write_text(
            "trainer:\n"
            "  logger:\n"
            "    class_path: hmc.training.WandbLogger\n"
            f"    init_args: {{project: hmc-test, save_dir: '{wandb_home}', log_model: true}}\n"
            "  callbacks:\n"
            "    - class_path: hmc.training.LogSummary\n"
        )
        logger = [f"--config={config}"]
    else:
        logger = ["--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={wandb_home}"]
    cli = LightningCLI(
        HMCModule,
        ToyData,
        args=[
            *logger,
            f"--model.hierarchy={tree}",
            "--model.backbone=test_resnet",
            f"--model.head_kwargs={json.dumps(TINY_HEAD)}",
            "--model.lr=0.05",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=1",
            "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_checkpointing=false",
            f"--trainer.default_root_dir={wandb_home}",
        ],
        run=False,
        save_config_callback=LoggerSaveConfigCallback,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )
    cli.trainer.fit(cli.model, cli.datamodule)
    if use_wandb:
        run = cli.trainer.logger.experiment
        saved = yaml.safe_load((Path(run.dir) / "lightning_config.yaml").read_text())
        trainer_cfg, model_cfg = run.config["trainer"], run.config["model"]
        assert saved["model"]["lr"] == 0.05
    else:
        saved = yaml.safe_load((Path(cli.trainer.logger.log_dir) / "hparams.yaml").read_text())
        trainer_cfg, model_cfg = saved["trainer"], saved["model"]
    assert trainer_cfg["max_epochs"] == 1
    assert model_cfg["lr"] == 0.05


# ------------------------------------------------------------------------- sample batch
def test_fixed_batch_spreads_over_a_sorted_dataset():
    targets = torch.arange(40) // 10  # sorted by class: the first 4 are all class 0
    ds = TensorDataset(torch.zeros(40, 3, 4, 4), targets)
    images, got = fixed_batch(DataLoader(ds, batch_size=4), 4)
    assert images.shape == (4, 3, 4, 4)
    assert got.tolist() == [0, 1, 2, 3]

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(zip(torch.zeros(10, 3, 4, 4), torch.arange(10), strict=True))

    images, got = fixed_batch([DataLoader(Stream(), batch_size=3)], 5)
    assert got.tolist() == [0, 1, 2, 3, 4]
    assert fixed_batch(DataLoader(list(range(5)), batch_size=2), 2) is None  # no images
