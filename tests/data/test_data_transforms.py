"""Transform presets and class-balanced sampling."""

from __future__ import annotations

import pytest
import torch
from data_fixtures import bird_hierarchy
from PIL import Image

import hmc.data as D
from hmc.data.transforms import build_transforms, default_image_size


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize(
    "preset,size,expect",
    [("paper", None, 448), ("paper", 64, 64), ("small", None, 64), ("small", 32, 32),
     ("imagenet", 48, 48)],
)  # fmt: skip
def test_presets_give_three_channel_tensors(preset, size, expect, mode):
    image = Image.new(mode, (70, 50), 128)
    for train in (True, False):
        x = build_transforms(preset, train=train, image_size=size)(image)
        assert x.shape == (3, expect, expect) and x.dtype == torch.float32


def test_paper_preset_matches_the_recipe():
    """Evaluation: resize to 550 x 550, centre-crop 448, normalise with 0.5 / 0.5."""
    image = Image.new("RGB", (600, 400), (255, 0, 128))
    x = build_transforms("paper", train=False)(image)
    assert x.shape == (3, 448, 448)
    assert torch.allclose(x[:, 200, 200], torch.tensor([1.0, -1.0, 128 / 255 * 2 - 1]), atol=1e-2)
    # Training: random crop 448 from the 550 resize padded by 8, so a flat image stays flat
    # except for the zero padding that a crop can bring in at the border.
    t = build_transforms("paper", train=True)(image)
    assert t.shape == (3, 448, 448)
    assert torch.allclose(t[0, 224, 224], torch.tensor(1.0))
    tf = build_transforms("paper", train=True)
    names = [type(op).__name__ for op in tf.transforms]
    assert names[:4] == ["RGB", "Resize", "RandomCrop", "RandomHorizontalFlip"]
    assert tf.transforms[1].size == [550, 550] and tf.transforms[2].padding == [8, 8, 8, 8]


def test_imagenet_preset_uses_timm_config():
    tf = build_transforms(
        "imagenet", train=False, data_config={"input_size": (3, 40, 40), "mean": (0, 0, 0),
                                              "std": (1, 1, 1), "crop_pct": 1.0},
    )  # fmt: skip
    x = tf(Image.new("L", (80, 60), 255))
    assert x.shape == (3, 40, 40) and torch.allclose(x, torch.ones_like(x))


def test_bad_preset_and_size():
    with pytest.raises(ValueError, match=r"`preset` to be one of \['paper', 'imagenet', 'small'\]"):
        build_transforms("tiny")
    with pytest.raises(ValueError, match="`image_size` to be positive"):
        build_transforms("small", image_size=-3)
    assert default_image_size("small") == 64


# ------------------------------------------------------------------------ sampler
def test_balanced_weights_balance_each_level():
    h = bird_hierarchy()
    leaves = h.tensors().leaves
    # 8 + 2 albatrosses (Diomedeidae), 5 + 5 warblers (Parulidae), 1 jay, 3 family-level
    # Parulidae labels, 2 order-level Passeriformes labels, 1 unlabelled.
    t = torch.cat([
        leaves[0].repeat(8), leaves[1].repeat(2), leaves[2].repeat(5), leaves[3].repeat(5),
        leaves[4].repeat(1), torch.tensor([h.index("Parulidae")] * 3),
        torch.tensor([h.index("Passeriformes")] * 2), torch.tensor([-100]),
    ])  # fmt: skip
    w = D.balanced_weights(h, t, "family")
    groups = {
        "Diomedeidae": slice(0, 10), "Parulidae": slice(10, 20), "Corvidae": slice(20, 21),
    }  # fmt: skip
    mass = {k: float(w[s].sum()) for k, s in groups.items()}
    assert mass["Diomedeidae"] == pytest.approx(1.0)
    assert mass["Corvidae"] == pytest.approx(1.0)
    # Family-level Parulidae labels count with the Parulidae species: 13 samples share mass 1.
    assert float(w[10:20].sum() + w[21:24].sum()) == pytest.approx(1.0)
    # Order-level labels sit above the level: a group of their own; so does unlabelled.
    assert float(w[24:26].sum()) == pytest.approx(1.0) and float(w[26]) == pytest.approx(1.0)
    species = D.balanced_weights(h, t, "species")
    assert float(species[:8].sum()) == pytest.approx(float(species[8:10].sum()))


def test_class_balanced_sampler_draws_levels_evenly():
    h = bird_hierarchy()
    leaves = h.tensors().leaves
    t = torch.cat([leaves[0].repeat(90), leaves[4].repeat(10)])  # 90 albatrosses, 10 jays
    gen = torch.Generator().manual_seed(0)
    sampler = D.class_balanced_sampler(h, t, "order", num_samples=4000, generator=gen)
    drawn = t[torch.tensor(list(sampler))]
    share = float((drawn == leaves[4]).float().mean())
    assert 0.45 < share < 0.55  # balanced per order, vs 0.1 without the sampler
    with pytest.raises(ValueError, match=r"unknown level 'genus'; levels are \['order', 'family'"):
        D.class_balanced_sampler(h, t, "genus")


def test_to_normalized_tensor_matches_torchvision_and_is_plain():
    from torchvision.transforms import v2

    from hmc.data.transforms import ToNormalizedTensor

    gen = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (20, 30, 3), generator=gen, dtype=torch.uint8)
    image = Image.fromarray(pixels.numpy())
    mean, std = (0.2, 0.4, 0.5), (0.3, 0.2, 0.1)
    ref = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
    ours = ToNormalizedTensor(mean, std)
    for x in (image, pixels.permute(2, 0, 1), pixels.permute(2, 0, 1).float() / 255):
        y = ours(x)
        assert type(y) is torch.Tensor and y.is_contiguous() and y.shape == (3, 20, 30)
        assert torch.allclose(y, ref(image).as_subclass(torch.Tensor), atol=1e-5)
    assert type(build_transforms("small", train=False)(image)) is torch.Tensor


def test_decode_size_draws_jpegs_smaller_but_never_below_the_size(tmp_path):
    from data_fixtures import write_image

    from hmc.data import decode_size, pil_loader

    write_image(tmp_path / "a" / "x.jpg", size=(96, 64))
    write_image(tmp_path / "a" / "y.png", size=(96, 64))
    assert pil_loader(str(tmp_path / "a" / "x.jpg"), 16).size == (24, 16)  # DCT scale 1/4
    assert pil_loader(str(tmp_path / "a" / "x.jpg"), 30).size == (48, 32)  # 1/2
    assert pil_loader(str(tmp_path / "a" / "x.jpg"), 40).size == (96, 64)  # 32 < 40: full
    assert pil_loader(str(tmp_path / "a" / "y.png"), 16).size == (96, 64)  # not a JPEG
    ds = D.HierarchyFolder(tmp_path)
    ds.decode_size = 16
    assert ds[0][0].size == (24, 16)
    assert decode_size("paper") == 550 and decode_size("small", 32) == 32
    assert decode_size("imagenet") is None


# ---------------------------------------------------------------------- API shape
@pytest.mark.parametrize(
    "fn",
    [D.HierarchicalDataset, D.ImageFileDataset, D.ArrayDataset, D.CSVDataset, D.ImagePaths,
     D.level_counts, D.relabel_targets, D.balanced_weights, D.class_balanced_sampler],
    ids=lambda f: f.__name__,
)  # fmt: skip
def test_the_hierarchy_comes_first(fn):
    import inspect

    params = [p for p in inspect.signature(fn).parameters if p != "self"]
    assert params[0] == "hierarchy"


@pytest.mark.parametrize("cls", list(D.DATASETS.values()), ids=lambda c: c.__name__)
def test_a_default_hierarchy_is_the_keyword_hierarchy(cls):
    import inspect

    param = inspect.signature(cls).parameters["hierarchy"]
    if cls is D.CSVDataset:  # no default tree: the first argument
        assert next(iter(inspect.signature(cls).parameters)) == "hierarchy"
    else:
        assert param.kind is inspect.Parameter.KEYWORD_ONLY and param.default is None
