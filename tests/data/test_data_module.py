"""HMCDataModule: setup per stage, loaders, relabelling, sampling, splits, Lightning, CLI args."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from data_fixtures import (
    bird_hierarchy,
    corrupt,
    make_cub,
    make_fashion,
    make_folder_tree,
    write_image,
)

import hmc.data as D
from hmc.data.samplers import EpochSampler
from hmc.hierarchy import load_hierarchy

pl = pytest.importorskip("pytorch_lightning")
from hmc.training import HMCDataModule  # noqa: E402


@pytest.fixture
def fashion_root(tmp_path):
    """Fashion-MNIST decompressed from a stand-in for the Debian package folder."""
    make_fashion(tmp_path / "debian", train_per_class=10, test_per_class=3, gz=True)
    return tmp_path


def _fashion(root, **kw) -> HMCDataModule:
    kw.setdefault("num_workers", 0)
    kw.setdefault("batch_size", 8)
    opts = {"system_dir": str(root / "debian"), **kw.pop("dataset_kwargs", {})}
    return HMCDataModule("fashion-mnist", root=str(root / "data"), dataset_kwargs=opts, **kw)


def test_import_hmc_data_does_not_import_lightning():
    code = "import sys, hmc.data; print(*(m in sys.modules for m in ['pytorch_lightning', 'timm']))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_hierarchy_is_ready_after_init_without_touching_disk(tmp_path):
    dm = HMCDataModule("cub200", root=str(tmp_path / "not-there-yet"))
    assert dm.hierarchy == load_hierarchy("cub200")
    assert HMCDataModule("cifar100", root="x", hierarchy="cifar100").hierarchy.num_levels == 2
    assert not (tmp_path / "not-there-yet").exists()


def test_fashion_mnist_fit_test_predict(fashion_root):
    write_image(fashion_root / "pred" / "a.png", size=(28, 28))
    write_image(fashion_root / "pred" / "sub" / "b.jpg", size=(40, 30))
    dm = _fashion(fashion_root, predict_paths=[str(fashion_root / "pred")])
    dm.prepare_data()
    assert (fashion_root / "data/FashionMNIST/raw/t10k-labels-idx1-ubyte").is_file()
    dm.setup("fit")
    assert len(dm.train_dataset) == 90 and len(dm.val_dataset) == 10
    assert "split='val'" in repr(dm.val_dataset)
    assert dm.label_counts["train"] == {"domain": 0, "type": 0, "class": 90}
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
    assert dm.train_dataloader().drop_last
    dm.setup("test")
    test = dm.test_dataloader()
    assert not test.drop_last and len(dm.test_dataset) == 30
    assert sum(len(b[1]) for b in test) == 30  # every sample, last batch of 6 included
    assert sum(len(b[1]) for b in dm.val_dataloader()) == 10
    dm.setup("predict")
    batches = list(dm.predict_dataloader())
    assert sum(len(b[1]) for b in batches) == 2 and (batches[0][1] == -100).all()
    assert [Path(p).name for p in dm.predict_dataset.paths] == ["a.png", "b.jpg"]
    assert dm.transform_config() == {"preset": "small", "image_size": 32}


def test_relabel_and_limits_only_touch_training(fashion_root):
    relabel = D.RelabelConfig(ratio=0.5, to="domain", selection="random", seed=3)
    dm = _fashion(fashion_root, relabel=relabel, max_per_class=6, val_fraction=0.2)
    dm.setup("fit")
    dm.setup("test")
    # 6 per class kept, then 1 of them (round(0.2 * 6)) per class held out for validation; of
    # the 5 left, 5 - ceil(0.5 * 5) = 2 per class are relabelled. The test set stays whole.
    assert dm.label_counts["train"] == {"domain": 20, "type": 0, "class": 30}
    assert dm.label_counts["val"] == {"domain": 0, "type": 0, "class": 10}
    assert dm.label_counts["test"] == {"domain": 0, "type": 0, "class": 30}
    again = _fashion(fashion_root, relabel=relabel, max_per_class=6, val_fraction=0.2)
    again.setup("fit")
    assert torch.equal(again.train_dataset.targets, dm.train_dataset.targets)


def test_num_workers_and_balanced_sampling(fashion_root):
    dm = _fashion(fashion_root, num_workers=2, balanced_sampling="domain")
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.num_workers == 2 and loader.persistent_workers
    assert isinstance(loader.sampler, EpochSampler) and loader.sampler.weights is not None
    ys = torch.cat([y for _, y in loader])
    assert len(ys) == 88  # 90 drawn with replacement, the last partial batch dropped
    with pytest.raises(ValueError, match="unknown level 'genus'"):
        _fashion(fashion_root, balanced_sampling="genus")


class _Tiny(pl.LightningModule):
    """The smallest model that consumes (images, targets) batches, counting what it sees."""

    def __init__(self, num_nodes: int) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, num_nodes)
        self.seen: dict[str, int] = {}

    def _step(self, batch, stage):
        x, y = batch
        self.seen[stage] = self.seen.get(stage, 0) + len(y)
        logits = self.layer(x.mean((2, 3)))
        return torch.nn.functional.cross_entropy(logits, y.clamp_min(0))

    def training_step(self, batch, i):
        return self._step(batch, "train")

    def validation_step(self, batch, i):
        self._step(batch, "val")

    def test_step(self, batch, i):
        self._step(batch, "test")

    def predict_step(self, batch, i):
        return batch[1]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(**kw):
    return pl.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, **kw,
    )  # fmt: skip


def test_cub_with_a_trainer_reports_skipped_images(tmp_path, monkeypatch):
    monkeypatch.setattr(D.samplers, "_warned", False)
    make_cub(tmp_path, train_per_class=6, test_per_class=2)
    h = bird_hierarchy()
    dm = HMCDataModule(
        "cub200", root=str(tmp_path), hierarchy=h, batch_size=4, num_workers=0, preset="small",
        image_size=16, on_bad_sample="skip", val_fraction=0.34,
        predict_paths=[str(tmp_path / "CUB_200_2011" / "images" / "005.Blue_Jay")],
    )  # fmt: skip
    dm.setup("fit")
    corrupt(Path(dm.train_dataset.paths[0]))
    model = _Tiny(h.num_nodes)
    trainer = _trainer()
    with pytest.warns(D.SkippedSamplesWarning, match="skipped 1 of 4 samples") as rec:
        trainer.fit(model, datamodule=dm)
    assert sum(issubclass(w.category, D.SkippedSamplesWarning) for w in rec) == 1
    assert model.seen == {"train": 19, "val": 10}
    trainer.save_checkpoint(tmp_path / "x.ckpt")  # data hparams are plain values
    saved = torch.load(tmp_path / "x.ckpt", weights_only=True)["datamodule_hyper_parameters"]
    assert saved["relabel"] == {"ratio": 0.0, "to": "parent", "selection": "first", "seed": 0}
    _trainer().test(model, datamodule=dm)
    assert model.seen["test"] == 10
    out = _trainer().predict(model, datamodule=dm)
    assert len(torch.cat(out)) == 8


def test_no_validation_when_val_fraction_is_zero(fashion_root):
    dm = _fashion(fashion_root, val_fraction=0.0, max_per_class=2)
    model = _Tiny(dm.hierarchy.num_nodes)
    _trainer().fit(model, datamodule=dm)
    assert dm.val_dataset is None and model.seen == {"train": 16}
    assert dm.val_dataloader() == []


def test_csv_single_file_and_split_folder(tmp_path):
    make_folder_tree(tmp_path / "img")
    rows = ["path,label"]
    for p in sorted((tmp_path / "img").rglob("*.jpg")):
        rows.append(f"{p.relative_to(tmp_path).as_posix()},{p.parent.name}")
    (tmp_path / "all.csv").write_text("\n".join(rows) + "\n")
    dm = HMCDataModule(
        "csv", root=str(tmp_path / "all.csv"), hierarchy=_tree_file(tmp_path), batch_size=4,
        num_workers=0, preset="small", image_size=8, val_fraction=0.25,
    )  # fmt: skip
    dm.setup("fit")
    assert len(dm.train_dataset) == 15 and len(dm.val_dataset) == 5
    assert next(iter(dm.train_dataloader()))[0].shape == (4, 3, 8, 8)
    with pytest.raises(FileNotFoundError, match=r"csv: no test split .*test.csv"):
        dm.setup("test")
    split = tmp_path / "split"
    split.mkdir()
    (split / "train.csv").write_text("\n".join(rows[:12]).replace("img/", "../img/") + "\n")
    (split / "test.csv").write_text(
        "\n".join([rows[0], *rows[12:]]).replace("img/", "../img/") + "\n"
    )
    dm = HMCDataModule("csv", root=str(split), hierarchy=_tree_file(tmp_path), num_workers=0,
                       val_fraction=0.0)  # fmt: skip
    dm.setup()
    assert len(dm.train_dataset) == 11 and len(dm.test_dataset) == 9 and dm.val_dataset is None
    with pytest.raises(ValueError, match="needs a `hierarchy`"):
        HMCDataModule("csv", root=str(split))


def _tree_file(tmp_path) -> str:
    path = tmp_path / "birds.tree"
    if not path.exists():
        bird_hierarchy().save(path)
    return str(path)


def test_folder_dataset_with_split_subfolders(tmp_path):
    make_folder_tree(tmp_path / "train")
    make_folder_tree(tmp_path / "test")
    (tmp_path / "train" / "README.txt").unlink()
    dm = HMCDataModule(
        "folder", root=str(tmp_path), num_workers=0, preset="small", image_size=8, val_fraction=0.25
    )
    assert dm.hierarchy.num_levels == 3 and "Passeriformes/Parulidae" in dm.hierarchy
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (16, 6, 22)
    assert dm.test_dataset.hierarchy is dm.hierarchy


def test_argument_errors(tmp_path):
    with pytest.raises(ValueError, match=r"`dataset` to be one of \['cub200', 'nabirds'"):
        HMCDataModule("imagenet")
    with pytest.raises(ValueError, match=r"`preset` to be one of"):
        HMCDataModule("cub200", preset="big")
    with pytest.raises(ValueError, match=r"`val_fraction` to be in \[0, 1\)"):
        HMCDataModule("cub200", val_fraction=1.0)
    with pytest.raises(ValueError, match="CUB200 cannot be downloaded automatically"):
        HMCDataModule("cub200", root=str(tmp_path), download=True).prepare_data()
    HMCDataModule("cub200", root=str(tmp_path)).prepare_data()  # no download: nothing to do


def test_cli_style_arguments_parse():
    """LightningCLI parses the data module's signature with jsonargparse (nested dataclass)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(HMCDataModule, "data")
    cfg = parser.parse_args(
        ["--data.dataset", "cub200", "--data.relabel.ratio", "0.5", "--data.relabel.to",
         "order", "--data.predict_paths", "[a.jpg, b/]", "--data.balanced_sampling", "family"],
    )  # fmt: skip
    dm = parser.instantiate(cfg).data
    assert dm.relabel == D.RelabelConfig(ratio=0.5, to="order")
    assert dm.predict_paths == ["a.jpg", "b/"] and dm.hierarchy.name("Parulidae")


def test_shipped_cub_hierarchies_match_cub_folder_names(tmp_path):
    classes = sorted(load_hierarchy("cub200").leaves)[:3]
    make_cub(tmp_path, classes=classes, train_per_class=3, test_per_class=1)
    for name in ("cub200", "cub200-hrn", "cub200-4level"):
        ds = D.CUB200(tmp_path, "test", hierarchy=name)
        assert [ds.hierarchy.nodes[t] for t in ds.targets.tolist()] == classes


@pytest.mark.skipif(os.environ.get("HMC_SLOW_TESTS") != "1", reason="set HMC_SLOW_TESTS=1")
def test_debian_fashion_mnist_full(tmp_path):  # pragma: no cover - optional, 70k images
    dm = HMCDataModule("fashion-mnist", root=str(tmp_path), num_workers=0)
    dm.prepare_data()
    dm.setup()
    assert len(dm.train_dataset) + len(dm.val_dataset) == 60000


# --------------------------------------------------------------- one of each
def test_predict_paths_find_the_files_hmc_predict_finds(tmp_path):
    from hmc.predict import list_images

    for name in ("a.jpg", "b.PNG", "c.gif", "d.pgm", "e.webp", "sub/f.tiff", "notes.txt"):
        (tmp_path / "pred" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pred" / name).write_bytes(b"")
    single = tmp_path / "single.bmp"
    single.write_bytes(b"")
    inputs = [str(tmp_path / "pred"), str(single)]
    dm = HMCDataModule("cub200", root=str(tmp_path), predict_paths=inputs, num_workers=0)
    dm.setup("predict")
    found = [Path(p) for p in dm.predict_dataset.paths]
    assert found == list_images(inputs) == D.list_images(inputs)
    assert [p.name for p in found] == ["a.jpg", "b.PNG", "c.gif", "d.pgm", "e.webp", "f.tiff",
                                       "single.bmp"]  # fmt: skip


def test_train_and_val_are_carved_in_one_place(tmp_path):
    """The data module's train/val are train_val_split's, from the trainval pool limited first;
    a dataset with an official val split is used as it is."""
    make_cub(tmp_path, train_per_class=8, test_per_class=1)
    h = bird_hierarchy()
    dm = HMCDataModule("cub200", root=str(tmp_path), hierarchy=h, num_workers=0,
                       val_fraction=0.25, max_per_class=6, seed=3)  # fmt: skip
    dm.setup("fit")
    pool = D.limit_per_class(D.CUB200(tmp_path, hierarchy=h), 6)
    train, val = D.train_val_split(pool, 0.25, seed=3)
    assert list(dm.train_dataset.paths) == list(train.paths)
    assert list(dm.val_dataset.paths) == list(val.paths) and len(val) == 10
    assert dm.train_dataset.transform is not dm.val_dataset.transform
    from data_fixtures import make_aircraft

    info = make_aircraft(tmp_path / "air")
    air = HMCDataModule("aircraft", root=str(tmp_path / "air"), num_workers=0, val_fraction=0.5,
                        hierarchy=_aircraft_tree(tmp_path))  # fmt: skip
    air.setup("fit")
    assert len(air.val_dataset) == info["per_split"]["val"]  # official, not carved
    assert len(air.train_dataset) == info["per_split"]["train"]


def _aircraft_tree(tmp_path) -> str:
    from data_fixtures import aircraft_hierarchy

    path = tmp_path / "aircraft.tree"
    aircraft_hierarchy().save(path)
    return str(path)


def test_every_registered_dataset_answers_for_itself(tmp_path):
    for name, cls in D.DATASETS.items():
        assert isinstance(cls.has_val_split, type(D.CUB200.has_val_split)), name
        assert cls.default_preset in ("paper", "small"), name
        if cls.hierarchy_name is not None:
            assert cls.default_hierarchy(tmp_path).num_nodes > 0
    assert D.DATASETS["aircraft"].has_val_split(tmp_path)
    assert not D.DATASETS["cifar100"].has_val_split(tmp_path)
    with pytest.raises(ValueError, match="CSVDataset needs a `hierarchy`"):
        D.CSVDataset.default_hierarchy(tmp_path)


def test_transform_kwargs_reach_the_transform_and_the_checkpoint(fashion_root):
    cfg = {"input_size": (3, 40, 40), "mean": (0, 0, 0), "std": (1, 1, 1), "crop_pct": 1.0}
    dm = _fashion(fashion_root, preset="imagenet", image_size=None,
                  transform_kwargs={"data_config": cfg})  # fmt: skip
    dm.prepare_data()
    dm.setup("test")
    assert dm.test_dataset[0][0].shape == (3, 40, 40)
    assert dm.transform_config() == {"preset": "imagenet", "image_size": None, "data_config": cfg}
    with pytest.raises(TypeError, match="data_config"):
        _fashion(fashion_root, dataset_kwargs={"data_config": cfg}).setup("test")


@pytest.mark.parametrize(
    "relabel, message",
    [({"ratio": -0.1}, r"`ratio` to be in \[0, 1\], but got -0.1"),
     ({"ratio": 0.5, "to": "genus"}, r"`to` to be one of \['parent', 'random', 'order'")],
)  # fmt: skip
def test_relabel_options_are_checked_when_the_data_module_is_built(relabel, message):
    with pytest.raises(ValueError, match=message):
        HMCDataModule("cub200", hierarchy=bird_hierarchy(), relabel=relabel)


def test_a_config_with_a_negative_relabel_ratio_fails_as_it_is_read():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(HMCDataModule, "data")
    with pytest.raises(Exception, match=r"ratio.*-0.1"):
        parser.instantiate(parser.parse_args(["--data.relabel.ratio", "-0.1"]))
