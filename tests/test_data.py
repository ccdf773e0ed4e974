import numpy as np
import pytest
import torch
from conftest import CIFAR10
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage

from hfvision.data.sources import decode_split, find_columns, load_eval_split, load_raw, split_dataset
from hfvision.data.synthetic import CLASSES, make_images
from hfvision.data.transforms import BatchPreprocessor, random_crop_with_padding
from hfvision.errors import HfvisionError
from hfvision.spec import InputSpec
from hfvision.recipe import AugmentRecipe, DataRecipe


def test_synthetic_boxes_hold_the_coloured_shape():
    images, labels, boxes = make_images(60)
    assert images.shape == (60, 32, 32, 3) and set(labels) == set(range(len(CLASSES)))
    for image, (x0, y0, x1, y1) in zip(images, boxes):
        inside = image[y0:y1, x0:x1].reshape(-1, 3).astype(int)
        saturation = inside.max(1) - inside.min(1)
        assert (saturation > 120).mean() > 0.3  # the shape's colour dominates its box; noise is grey-ish


def test_split_is_stratified_seeded_and_limits_apply():
    raw = load_raw("synthetic")
    recipe = DataRecipe(val_fraction=0.2, max_eval_samples=100)
    splits, image_column, label_column, names = split_dataset(raw, recipe, seed=0)
    assert (image_column, label_column, names) == ("image", "label", list(CLASSES))
    full, *_ = split_dataset(raw, DataRecipe(val_fraction=0.2), seed=0)
    counts = np.bincount(full["validation"]["label"], minlength=6)
    assert counts.max() - counts.min() <= 1  # stratified: equal per class
    assert len(full["train"]) + len(full["validation"]) == len(raw["train"])
    assert len(splits["test"]) == 100 and len(splits["validation"]) == 100
    again, *_ = split_dataset(raw, DataRecipe(val_fraction=0.2), seed=0)
    other, *_ = split_dataset(raw, DataRecipe(val_fraction=0.2), seed=1)
    assert again["validation"]["bbox"] == full["validation"]["bbox"] != other["validation"]["bbox"]
    assert full["test"]["bbox"] == raw["test"]["bbox"]  # the official test split is untouched


def test_columns_found_from_features_with_cifar100_layout():
    features = Features({"img": Image(), "fine_label": ClassLabel(names=["a", "b"]),
                         "coarse_label": ClassLabel(names=["x"])})
    assert find_columns(features, None, None) == ("img", "fine_label")
    assert find_columns(features, None, "coarse_label") == ("img", "coarse_label")
    with pytest.raises(HfvisionError, match="data.label_column: 'nope' is not a column"):
        find_columns(features, None, "nope")
    two = Features({"a": ClassLabel(names=["x"]), "b": ClassLabel(names=["y"]), "im": Image()})
    with pytest.raises(HfvisionError, match="found 2 class-label columns"):
        find_columns(two, None, None)


def test_grayscale_rgba_and_mixed_sizes_become_rgb(tmp_path):
    gray = PILImage.fromarray(np.full((32, 32), 200, np.uint8), mode="L")
    rgba = PILImage.fromarray(np.full((40, 40, 4), 100, np.uint8), mode="RGBA")
    ds = Dataset.from_dict({"image": [gray, rgba], "label": [0, 1]},
                           features=Features({"image": Image(), "label": ClassLabel(names=["g", "r"])}))
    with pytest.raises(HfvisionError, match="data.image_size"):
        decode_split(ds, "image", "label", None)
    split = decode_split(ds, "image", "label", 32)
    assert split.pixels.shape == (2, 3, 32, 32) and split.pixels.dtype == torch.uint8
    assert split.pixels[0].float().mean() == 200


def test_local_parquet_and_image_folder_sources(tmp_path, caplog):
    images, labels, _ = make_images(40)
    features = Features({"img": Image(), "label": ClassLabel(names=list(CLASSES))})
    parquet = tmp_path / "parquet"
    parquet.mkdir()
    for split, part in (("train", slice(0, 30)), ("test", slice(30, 40))):
        Dataset.from_dict({"img": list(images[part]), "label": labels[part].tolist()},
                          features=features).to_parquet(parquet / f"{split}-00000-of-00001.parquet")
    (parquet / "README.md").write_text("# A local copy\n\nNo YAML block, like ../shared/data/cifar10.\n")
    raw = load_raw(str(parquet))
    assert set(raw) == {"train", "test"} and len(raw["train"]) == 30
    assert not [r for r in caplog.records if "metadata block" in r.getMessage()]  # huggingface_hub's card notice
    folder = tmp_path / "folder" / "train"
    for i, (image, label) in enumerate(zip(images, labels)):
        (folder / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(image).save(folder / CLASSES[label] / f"{i}.png")
    raw = load_raw(str(tmp_path / "folder"))
    splits, image_column, label_column, names = split_dataset(raw, DataRecipe(val_fraction=0.2), seed=0)
    assert sorted(names) == sorted(CLASSES) and len(splits["test"]) > 0  # no test split: one is held out
    assert sum(len(s) for s in splits.values()) == 40


def test_missing_and_broken_sources_are_one_line_errors(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(HfvisionError, match="is not a directory"):
        load_raw(str(tmp_path / "file.txt"))
    with pytest.raises(HfvisionError, match="data.dataset: could not load 'no-such-user/no-such-dataset'"):
        load_raw("no-such-user/no-such-dataset")


def test_random_crop_matches_a_per_sample_reference():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    generator = torch.Generator().manual_seed(0)
    out = random_crop_with_padding(images, 2, generator)
    replay = torch.Generator().manual_seed(0)
    top, left = torch.randint(0, 5, (2,), generator=replay), torch.randint(0, 5, (2,), generator=replay)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(2):
        torch.testing.assert_close(out[i], padded[i, :, top[i]:top[i] + 8, left[i]:left[i] + 8])


def test_preprocessing_resizes_normalises_and_augments_only_in_training():
    norm = InputSpec(64, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2))
    images = torch.full((4, 3, 32, 32), 255, dtype=torch.uint8)
    prep = BatchPreprocessor(norm, AugmentRecipe(random_crop_padding=4), num_classes=6)
    x, labels = prep(images, torch.arange(4), train=False)
    assert x.shape == (4, 3, 64, 64)
    torch.testing.assert_close(x[:, 0].mean(), torch.tensor(2.5))
    y, _ = prep(images, torch.arange(4), train=True, generator=torch.Generator().manual_seed(0))
    assert (y[:, 0] < 0).any()  # zero padding moved into view
    mixer = BatchPreprocessor(norm, AugmentRecipe(mixup_alpha=1.0), num_classes=6)
    _, soft = mixer(images, torch.arange(4), train=True)
    assert soft.shape == (4, 6) and torch.allclose(soft.sum(1), torch.ones(4))


def test_processor_normalisation_matches_the_hf_processor():
    from transformers import ViTImageProcessor

    processor = ViTImageProcessor(size={"height": 48, "width": 48}, image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.25, 0.3])
    images, _, _ = make_images(3)
    expected = processor(list(images), return_tensors="pt")["pixel_values"]
    ours, _ = BatchPreprocessor(InputSpec(48, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)))(
        torch.from_numpy(images).permute(0, 3, 1, 2), torch.zeros(3), train=False)
    assert (ours - expected).abs().mean() < 0.05  # bilinear-antialias vs the processor's resample


@pytest.mark.skipif(not CIFAR10.exists(), reason="needs ../shared/data/cifar10")
def test_real_cifar10_copy_loads():
    split, names = load_eval_split(str(CIFAR10), "test", None, max_samples=50)
    assert names[0] == "airplane" and split.pixels.shape == (50, 3, 32, 32)


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR10.exists(), reason="needs ../shared/data/cifar10")
def test_quickstart_runs_on_real_cifar10(tmp_path):
    from conftest import REPO

    from hfvision.recipe import load_recipe
    from hfvision.pipeline import fit

    recipe = load_recipe(REPO / "recipes" / "quickstart.yaml",
                         [f"data.dataset={CIFAR10}", "data.max_train_samples=2000", "data.max_eval_samples=1000",
                          "train.epochs=1", f"output_dir={tmp_path / 'run'}", "train.report_to=none"])
    metrics = fit(recipe)
    assert metrics["test"]["num_samples"] == 1000 and list(metrics["test"]["per_class"])[:2] == ["airplane", "automobile"]
    assert metrics["test"]["accuracy"] > 0.15  # one short epoch, 10 classes: above chance


@pytest.mark.parametrize("batch, height, width, size", [
    (13, 32, 32, 224),  # whole factor 7, two-tap rows; 13 images span two CPU chunks of 11
    (2, 32, 40, 96),    # whole factor 3 on rows, another width
    (2, 16, 16, 48),    # whole factor 3, odd middle phase
    (2, 32, 32, 48),    # not a whole factor: matrix products
    (2, 48, 40, 32),    # shrinking: antialiased
    (2, 40, 40, 24),
])
def test_resize_bilinear_matches_interpolate_in_float64(batch, height, width, size):
    from hfvision.data.transforms import resize_bilinear

    x = torch.randn(batch, 3, height, width)
    expected = torch.nn.functional.interpolate(x.double(), size=(size, size), mode="bilinear", align_corners=False,
                                               antialias=size < max(height, width))
    # float32 F.interpolate itself is up to 1.6e-5 from the float64 result at 32 -> 224 (it rounds its source
    # coordinates); resize_bilinear's weights come from float64, so only the float32 arithmetic remains
    torch.testing.assert_close(resize_bilinear(x, size).double(), expected, rtol=0, atol=1e-6)


def test_resize_bilinear_passes_gradients_like_interpolate():
    from hfvision.data.transforms import resize_bilinear

    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    (resize_bilinear(x, 224) * weights).sum().backward()
    reference = x.detach().clone().requires_grad_()
    (torch.nn.functional.interpolate(reference, size=(224, 224), mode="bilinear", align_corners=False)
     * weights).sum().backward()
    torch.testing.assert_close(x.grad, reference.grad)
