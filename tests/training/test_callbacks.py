"""hmc.training.callbacks on tiny real pl.Trainer runs: with an offline W&B run (checked through
the run's .wandb records and files), with CSVLogger, and with no logger."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import wandb
from pytorch_lightning.loggers import CSVLogger
from test_wandb_utils import finished_records, items, wandb_home  # noqa: F401 (fixture)
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from hmc import Hierarchy
from hmc.decoding import decode
from hmc.training.callbacks import (
    LogConfusionMatrices,
    LoggerSaveConfigCallback,
    LogHierarchy,
    LogPredictionSamples,
    LogSummary,
    PerLevelAccuracyPlot,
    _fixed_batch,
    run_dir,
)
from hmc.training.wandb import WandbLogger


def toy() -> Hierarchy:
    return Hierarchy.from_paths(
        [("animal", "cat"), ("animal", "dog"), ("vehicle", "car"), ("vehicle", "bus")],
        level_names=["coarse", "fine"],
        metadata={"name": "toy"},
    )


def toy_data(n: int = 24, size: int = 8, seed: int = 0) -> TensorDataset:
    h = toy()
    g = torch.Generator().manual_seed(seed)
    leaves = h.indices(h.leaves)
    targets = leaves[torch.arange(n) % len(leaves)]
    targets[1] = h.index("vehicle")  # a coarse label
    return TensorDataset(torch.randn(n, 3, size, size, generator=g), targets)


class TinyModule(pl.LightningModule):
    """A linear model that follows the HMCModule contract the callbacks read."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.hierarchy = toy()
        self.model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(6))
        self.last_metrics: dict[str, float] = {}
        self.last_confusions: dict[str, list] = {}
        self._outputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def decode(self, node_scores: torch.Tensor):
        return decode(self.hierarchy, node_scores, "argmax", kind="level_logits")

    def training_step(self, batch, batch_idx):
        x, y = batch
        t = self.hierarchy.level_targets(y)[:, 0]  # coarse level: every sample has one
        return F.cross_entropy(self.model(x)[:, self.hierarchy.level_slice(1)], t)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self._outputs.append((self.decode(self.model(x)).nodes, self.hierarchy.level_targets(y)))

    def on_validation_epoch_end(self):
        nodes = torch.cat([o[0] for o in self._outputs])
        targets = torch.cat([o[1] for o in self._outputs])
        self._outputs.clear()
        h = self.hierarchy
        metrics, confusions = {}, {}
        for d, level in enumerate(h.level_names):
            ok = targets[:, d] >= 0
            metrics[f"val/acc/{level}"] = float((nodes[ok, d] == targets[ok, d]).float().mean())
            pairs, counts = torch.stack([targets[ok, d], nodes[ok, d]], 1).unique(
                dim=0, return_counts=True
            )
            confusions[level] = [
                (h.nodes[t], h.nodes[p], c)
                for (t, p), c in zip(pairs.tolist(), counts.tolist(), strict=True)
            ]
        metrics["val/acc/mean"] = sum(metrics.values()) / len(metrics)
        self.log_dict(metrics)
        self.last_metrics, self.last_confusions = metrics, confusions

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class TinyData(pl.LightningDataModule):
    def __init__(self, batch_size: int = 8) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self):
        return DataLoader(toy_data(), batch_size=self.batch_size)

    def val_dataloader(self):
        return DataLoader(toy_data(seed=1), batch_size=self.batch_size)


def trainer(root: Path, logger, callbacks, epochs: int = 2) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        limit_train_batches=2,
        limit_val_batches=2,
        num_sanity_val_steps=1,
        log_every_n_steps=1,
        accelerator="cpu",
        logger=logger,
        callbacks=callbacks,
        default_root_dir=str(root),
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def table_files(sync_dir: Path, key: str) -> list[Path]:
    return sorted((sync_dir / "files" / "media" / "table").glob(f"{key}_*.table.json"))


# ---------------------------------------------------------------- the real module, W&B on
def test_callbacks_log_to_an_offline_wandb_run(wandb_home):  # noqa: F811
    from hmc.training.module import HMCModule

    module = HMCModule(
        hierarchy=toy(),
        backbone="test_resnet",
        head="hrn",
        head_kwargs={"hidden": 16, "feature_dim": 8},
        optimizer="adamw",
        lr=1e-3,
    )
    train = DataLoader(toy_data(16), batch_size=4)
    val = DataLoader(toy_data(12, seed=1), batch_size=4)
    logger = WandbLogger(project="hmc-test", save_dir=str(wandb_home))
    plot = PerLevelAccuracyPlot()
    samples = LogPredictionSamples(num_samples=5)
    callbacks = [
        plot,
        LogHierarchy(),
        LogConfusionMatrices(max_rows=2, max_matrix_classes=2),
        samples,
        LogSummary(),
    ]
    root = wandb_home / "run"
    fit = trainer(root, logger, callbacks)
    fit.fit(module, train, val)
    val_fine = module.last_metrics["val/acc/fine"]
    fit.test(module, val, verbose=False)
    sync_dir = Path(logger.experiment.sync_dir)

    # The plot: one CSV row per validation epoch (not the sanity check), in the run folder.
    assert run_dir(fit) == root
    rows = read_csv(root / "per_level_accuracy.csv")
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert list(rows[0]) == ["epoch", "step", "coarse", "fine", "mean"]
    assert float(rows[-1]["fine"]) == pytest.approx(val_fine)
    assert (root / "per_level_accuracy.png").stat().st_size > 1000

    records = finished_records(sync_dir)
    (hier,) = [
        r.artifact
        for r in records
        if r.WhichOneof("record_type") == "artifact" and r.artifact.type == "hierarchy"
    ]
    assert hier.name.startswith("toy-")
    history = items(records, "history")
    for key in (
        "val/samples/_type",
        "val/confusion/fine/_type",
        "val/confusion_matrix/coarse_table/_type",
        "test/confusion/coarse/_type",
        "val/per_level_accuracy/_type",
    ):
        assert key in history, key
    assert "val/confusion_matrix/fine_table/_type" not in history  # 4 > max_matrix_classes
    summary = items(records, "summary")
    assert float(summary["test/acc/fine"]) == pytest.approx(module.last_metrics["test/acc/fine"])
    assert summary["epochs"] == "2"
    assert "hierarchy_info" in items(records, "config")

    # Table contents, from the run's files.
    sample_tables = table_files(sync_dir, "val/samples")
    assert len(sample_tables) == 2  # one per epoch
    # W&B keeps the full table (images as files) in a run_table artifact.
    (staged,) = [
        r.artifact
        for r in records
        if r.WhichOneof("record_type") == "artifact"
        and r.artifact.type == "run_table"
        and "valsamples" in r.artifact.name
    ][:1]
    files = {e.path: e.local_path for e in staged.manifest.contents}
    assert sum(p.endswith(".png") for p in files) == 5
    table = json.loads(Path(files["val/samples.table.json"]).read_text())
    assert table["columns"] == ["image", "true", "predicted", "correct"]
    assert len(table["data"]) == 5
    assert {row[0]["_type"] for row in table["data"]} == {"image-file"}
    assert {row[0]["path"] for row in table["data"]} <= set(files)
    images, targets = samples._batch
    h = module.hierarchy
    expected = [" > ".join(h.name(n) for n in h.ancestors(t)) for t in targets.tolist()]
    assert [row[1] for row in table["data"]] == expected
    assert all(" (" in row[2] and row[2].count(" > ") == 1 for row in table["data"])
    confusion = json.loads(table_files(sync_dir, "val/confusion/fine")[0].read_text())
    assert confusion["columns"] == ["true", "predicted", "count"]
    assert 0 < len(confusion["data"]) <= 2
    counts = [row[2] for row in confusion["data"]]
    assert counts == sorted(counts, reverse=True)


# --------------------------------------------------------------- other loggers, no logger
@pytest.mark.parametrize("use_csv", [True, False], ids=["csv", "no-logger"])
def test_callbacks_work_without_wandb(tmp_path, use_csv):
    logger = CSVLogger(str(tmp_path / "logs")) if use_csv else False
    samples = LogPredictionSamples(num_samples=4)
    callbacks = [
        PerLevelAccuracyPlot(),
        LogHierarchy(),
        LogConfusionMatrices(),
        samples,
        LogSummary(),
    ]
    fit = trainer(tmp_path, logger, callbacks, epochs=3)
    fit.fit(TinyModule(), TinyData())
    folder = tmp_path / "logs" / "lightning_logs" / "version_0" if use_csv else tmp_path
    assert run_dir(fit) == folder
    rows = read_csv(folder / "per_level_accuracy.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert (folder / "per_level_accuracy.png").is_file()
    assert samples._batch is None  # never loaded without W&B
    assert wandb.run is None


def test_plot_state_survives_a_checkpoint(tmp_path):
    plot = PerLevelAccuracyPlot(dirpath=str(tmp_path / "out"), filename="acc")
    fit = trainer(tmp_path, False, [plot], epochs=2)
    fit.fit(TinyModule(), TinyData())
    restored = PerLevelAccuracyPlot()
    restored.load_state_dict(plot.state_dict())
    assert restored.rows == plot.rows and len(restored.rows) == 2
    assert (tmp_path / "out" / "acc.png").is_file()
    restored.write(tmp_path / "again")
    assert read_csv(tmp_path / "again" / "per_level_accuracy.csv") == read_csv(
        tmp_path / "out" / "acc.csv"
    )


# --------------------------------------------------------------------------- the config
@pytest.mark.parametrize("use_wandb", [True, False], ids=["wandb", "csv"])
def test_resolved_config_reaches_the_logger(wandb_home, use_wandb):  # noqa: F811
    from pytorch_lightning.cli import LightningCLI

    if use_wandb:  # the way configs/*.yaml wire W&B: logger and callbacks from YAML
        config = wandb_home / "wandb.yaml"
        config.write_text(
            "trainer:\n"
            "  logger:\n"
            "    class_path: hmc.training.wandb.WandbLogger\n"
            f"    init_args: {{project: hmc-test, save_dir: '{wandb_home}', log_model: true}}\n"
            "  callbacks:\n"
            "    - class_path: hmc.training.callbacks.PerLevelAccuracyPlot\n"
            "    - class_path: hmc.training.callbacks.LogHierarchy\n"
            "    - class_path: hmc.training.callbacks.LogConfusionMatrices\n"
            "      init_args: {max_rows: 100, max_matrix_classes: 10}\n"
            "    - class_path: hmc.training.callbacks.LogPredictionSamples\n"
            "      init_args: {num_samples: 4}\n"
            "    - class_path: hmc.training.callbacks.LogSummary\n"
        )
        logger = [f"--config={config}"]
    else:
        logger = [
            "--trainer.logger=CSVLogger",
            f"--trainer.logger.save_dir={wandb_home}",
        ]
    cli = LightningCLI(
        TinyModule,
        TinyData,
        args=[
            *logger,
            "--model.lr=0.05",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=1",
            "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={wandb_home}",
        ],
        run=False,
        save_config_callback=LoggerSaveConfigCallback,
        save_config_kwargs={"overwrite": True},
    )
    cli.trainer.fit(cli.model, cli.datamodule)
    if use_wandb:
        run = cli.trainer.logger.experiment
        assert (Path(run.dir) / "lightning_config.yaml").is_file()
        records = finished_records(run.sync_dir)
        config = items(records, "config")
        trainer_cfg = json.loads(config["trainer"])
        model_cfg = json.loads(config["model"])
        assert "val/samples/_type" in items(records, "history")
        assert (wandb_home / "per_level_accuracy.png").is_file()
    else:
        hparams = Path(cli.trainer.logger.log_dir) / "hparams.yaml"
        import yaml

        saved = yaml.safe_load(hparams.read_text())
        trainer_cfg, model_cfg = saved["trainer"], saved["model"]
    assert trainer_cfg["max_epochs"] == 1
    assert model_cfg["lr"] == 0.05


# ------------------------------------------------------------------------- sample batch
def test_fixed_batch_spreads_over_a_sorted_dataset():
    targets = torch.arange(40) // 10  # sorted by class: the first 4 are all class 0
    ds = TensorDataset(torch.zeros(40, 3, 4, 4), targets)
    images, got = _fixed_batch(DataLoader(ds, batch_size=4), 4)
    assert images.shape == (4, 3, 4, 4)
    assert got.tolist() == [0, 1, 2, 3]

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(zip(torch.zeros(10, 3, 4, 4), torch.arange(10), strict=True))

    images, got = _fixed_batch([DataLoader(Stream(), batch_size=3)], 5)
    assert got.tolist() == [0, 1, 2, 3, 4]
    assert _fixed_batch(DataLoader(list(range(5)), batch_size=2), 2) is None  # no images
