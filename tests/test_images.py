"""One image loader for the data path, the explain CLI and the demo: modes, bad files, and data.on_bad_image."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, tiny_recipe_overrides
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage

from hfvision.data.images import UnreadableImage, load_pixels, load_rgb, resize_rgb
from hfvision.data.sources import decode_split, load_raw, split_dataset
from hfvision.data.synthetic import CLASSES, make_images
from hfvision.data.transforms import BatchPreprocessor
from hfvision.errors import HfvisionError
from hfvision.spec import InputSpec
from hfvision.recipe import DataRecipe, load_recipe

RAMP16 = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 64 + 7).astype(np.uint16)  # 7 .. 65479


def eight_bit(values16: np.ndarray) -> np.ndarray:
    """The reference 16 -> 8 bit conversion: v * 255 / 65535, rounded, as RGB."""
    gray = np.round(values16.astype(np.float64) * 255 / 65535).astype(np.uint8)
    return np.stack([gray] * 3, axis=-1)


def write_bad_files(folder) -> dict:
    """A truncated JPEG, a zero-byte .jpg and a text file named .jpg in ``folder``; returns {kind: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    PILImage.fromarray(make_images(1, 64)[0][0]).save(buffer, format="JPEG", quality=95)
    paths = {"truncated": folder / "truncated.jpg", "empty": folder / "empty.jpg", "text": folder / "notes.jpg"}
    paths["truncated"].write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    paths["empty"].write_bytes(b"")
    paths["text"].write_text("these are my notes, not a photo\n")
    return paths


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    PILImage.fromarray(RAMP16).save(path)
    assert PILImage.open(path).mode == "I;16"
    np.testing.assert_array_equal(load_rgb(path), eight_bit(RAMP16))
    assert (np.asarray(PILImage.open(path).convert("RGB")) == 255).mean() > 0.99  # what PIL's convert gives


def test_int_float_cmyk_and_transparent_modes_become_8_bit_rgb(tmp_path):
    as_int = PILImage.fromarray(np.array([[0, 65535, 70000, -5, 32768]], dtype=np.int32), mode="I")
    np.testing.assert_array_equal(load_rgb(as_int)[0, :, 0], [0, 255, 255, 0, 128])
    as_float = PILImage.fromarray(np.array([[0.0, 0.25, 1.0, 2.0, -1.0]], dtype=np.float32), mode="F")
    np.testing.assert_array_equal(load_rgb(as_float)[0, :, 0], [0, 64, 255, 255, 0])

    rgb = make_images(1, 32)[0][0]
    PILImage.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    assert PILImage.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    assert np.abs(load_rgb(tmp_path / "cmyk.jpg").astype(int) - rgb).mean() < 4  # JPEG loss only

    colour, alpha = np.array([200, 40, 10]), np.array([0, 128, 255])
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = colour, alpha
    over_white = np.round(colour[None] * alpha[:, None] / 255 + 255 * (1 - alpha[:, None] / 255))
    assert np.abs(load_rgb(PILImage.fromarray(rgba, "RGBA"))[0].astype(int) - over_white).max() <= 1
    la = PILImage.fromarray(np.stack([np.full(3, 60), alpha], -1)[None].astype(np.uint8), "LA")
    assert np.abs(load_rgb(la)[0, :, 0].astype(int) - np.round(60 * alpha / 255 + 255 * (1 - alpha / 255))).max() <= 1
    palette = PILImage.fromarray(np.array([[0, 1]], np.uint8), "P")
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette.info["transparency"] = 0  # index 0 is transparent: white, not its (10, 20, 30)
    palette.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(load_rgb(tmp_path / "palette.png")[0], [[255, 255, 255], [200, 100, 50]])


def test_exif_orientation_is_applied(tmp_path):
    image = PILImage.fromarray(np.zeros((2, 6, 3), np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    image.save(tmp_path / "phone.jpg", exif=exif)
    assert load_rgb(tmp_path / "phone.jpg").shape == (6, 2, 3)


@pytest.mark.parametrize("kind, reason", [("truncated", "truncated"), ("empty", "empty file"),
                                          ("text", "not an image file PIL can read")])
def test_bad_files_raise_one_line_naming_the_file(tmp_path, kind, reason):
    path = write_bad_files(tmp_path)[kind]
    with pytest.raises(UnreadableImage) as info:
        load_rgb(path)
    assert str(info.value).startswith(f"{path}: ") and reason in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UnreadableImage, match=f"^{tmp_path / 'missing.png'}: no such file$"):
        load_rgb(tmp_path / "missing.png")


def bytes_dataset(blobs: list[bytes], labels: list[int]) -> Dataset:
    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b"])})
    return Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in blobs], "label": labels},
                             features=features)


def png_bytes(array) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_bad_image_in_stored_bytes_is_named_by_split_and_index():
    good = png_bytes(np.full((8, 8, 3), 90, np.uint8))
    ds = bytes_dataset([good, b"not an image", good], [0, 1, 1])
    with pytest.raises(HfvisionError, match=r"^data: unreadable image test\[1\]: not an image file PIL can read "):
        decode_split(ds, "image", "label", None, "error", "test")
    split = decode_split(ds, "image", "label", None, "skip", "test")
    assert split.labels.tolist() == [0, 1] and split.pixels.shape == (2, 3, 8, 8)  # labels stay with their images
    assert split.skipped == ["test[1]: not an image file PIL can read"]
    with pytest.raises(HfvisionError, match="all 1 images of the test split are unreadable"):
        decode_split(bytes_dataset([b""], [0]), "image", "label", None, "skip", "test")


@pytest.fixture
def bad_image_folder(tmp_path):
    """An image folder of 24 good 32x32 images in two classes, a 16-bit PNG, a CMYK JPEG and three bad files."""
    root = tmp_path / "folder"
    images, labels, _ = make_images(24)
    for i, (image, label) in enumerate(zip(images, labels % 2)):
        (root / "train" / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(image).save(root / "train" / CLASSES[label] / f"{i}.png")
    PILImage.fromarray(RAMP16).save(root / "train" / CLASSES[0] / "deep.png")
    PILImage.fromarray(images[0]).convert("CMYK").save(root / "train" / CLASSES[1] / "cmyk.jpg", quality=100)
    bad = write_bad_files(root / "train" / CLASSES[1])
    return root, bad


def test_image_folder_skip_drops_exactly_the_bad_files_and_decodes_the_rest(bad_image_folder):
    root, bad = bad_image_folder
    ds = load_raw(str(root))["train"]
    with pytest.raises(HfvisionError) as info:
        decode_split(ds, "image", "label", None, "error", "train")
    assert any(str(path) in str(info.value) for path in bad.values()) and "\n" not in str(info.value)
    split = decode_split(ds, "image", "label", None, "skip", "train")
    assert len(split) == 26 and sorted(s.split(": ")[0] for s in split.skipped) == sorted(map(str, bad.values()))
    pixels = split.pixels[:].permute(0, 2, 3, 1).numpy()  # the 16-bit PNG is among them, correctly scaled
    assert sum(np.array_equal(image, eight_bit(RAMP16)) for image in pixels) == 1


@pytest.mark.slow
def test_finetune_stops_with_one_line_naming_the_bad_file(bad_image_folder, tmp_path):
    root, bad = bad_image_folder
    overrides = tiny_recipe_overrides(tmp_path / "run", **{"data.dataset": str(root), "data.val_fraction": 0.25})
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "finetune.py"),
                             str(REPO / "recipes" / "quickstart.yaml"), *overrides],
                            capture_output=True, text=True, cwd=REPO, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"})
    lines = result.stderr.strip().splitlines()  # (datasets' progress bars, also on stderr, are switched off)
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("error: data: unreadable image ") and any(str(p) in lines[0] for p in bad.values())
    assert "data.on_bad_image=skip" in lines[0]


@pytest.mark.slow
def test_training_with_skip_finishes_and_reports_the_skipped_files(bad_image_folder, tmp_path, capsys):
    from hfvision.pipeline import fit

    root, bad = bad_image_folder
    recipe = load_recipe(REPO / "recipes" / "quickstart.yaml", tiny_recipe_overrides(
        tmp_path / "run", **{"data.dataset": str(root), "data.val_fraction": 0.25, "data.on_bad_image": "skip"}))
    metrics = fit(recipe)
    out = capsys.readouterr().out
    assert "data: skipped 3 unreadable image(s): " in out and all(str(p) in out for p in bad.values())
    assert metrics["data"]["skipped_images"] == 3
    assert sorted(s.split(": ")[0] for s in metrics["data"]["skipped"]) == sorted(map(str, bad.values()))
    splits, *_ = split_dataset(load_raw(str(root)), recipe.data, recipe.seed)
    assert metrics["test"]["num_samples"] == len(splits["test"]) - sum(
        str(p) in [v["path"] for v in splits["test"].cast_column("image", Image(decode=False))["image"]]
        for p in bad.values())


def test_on_bad_image_is_validated():
    with pytest.raises(HfvisionError, match="data.on_bad_image: 'ignore' is not one of error, skip"):
        load_recipe(REPO / "recipes" / "quickstart.yaml", ["data.on_bad_image=ignore"])
    assert DataRecipe().on_bad_image == "error"


def test_explain_and_demo_loaders_give_the_data_path_pixels(tmp_path):
    from hfvision.explain.api import load_image

    big = make_images(1, 48, seed=3)[0][0]
    PILImage.fromarray(big).save(tmp_path / "big.png")
    # a folder of mixed sizes is resized at decode to the model's size: the single-image loaders must match it
    ds = Dataset.from_dict({"image": [str(tmp_path / "big.png"), PILImage.fromarray(make_images(1, 32)[0][0])],
                            "label": [0, 1]}, features=Features({"image": Image(), "label": ClassLabel(names=["a", "b"])}))
    decoded = decode_split(ds, "image", "label", 32)
    torch.testing.assert_close(load_pixels(tmp_path / "big.png", 32), decoded.pixels[:1], rtol=0, atol=0)
    torch.testing.assert_close(load_image(tmp_path / "big.png", 32), decoded.pixels[:1], rtol=0, atol=0)
    # and a uniform-size source resized per batch (float) differs from it by one level at most (uint8 kernel)
    norm = InputSpec(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    per_batch = BatchPreprocessor(norm).resize_and_normalize(torch.from_numpy(big).permute(2, 0, 1)[None])
    assert (BatchPreprocessor(norm).resize_and_normalize(decoded.pixels[:1]) - per_batch).abs().max() <= 1 / 255 / 0.5 + 1e-6
    np.testing.assert_array_equal(resize_rgb(big, 48), big)
