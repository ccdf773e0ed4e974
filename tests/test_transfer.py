"""Pretrained checkpoints at another input size, the head hfvision replaces, and the real ViT-Ti/16 in
``../shared/models`` (tests that want it skip without it)."""

import csv
import json

import numpy as np
import pytest
import torch
from conftest import REPO, randomise_head, tiny_recipe_overrides
from timm.layers import resample_abs_pos_embed

from hfvision.errors import HfvisionError
from hfvision.models.factory import build_model, resolve_input_spec
from hfvision.recipe import DataRecipe, ModelRecipe, load_recipe

SHARED = REPO.parent / "shared"
REAL_VIT = SHARED / "models" / "vit-tiny-patch16-224"
REAL_TIMM = SHARED / "models" / "timm-vit_tiny_patch16_224"
SAMPLES = SHARED / "data" / "imagenet-samples"
needs_shared = pytest.mark.skipif(not REAL_VIT.is_dir() or not REAL_TIMM.is_dir(), reason="../shared/models absent")


@pytest.fixture(scope="module")
def tiny_timm_dir(tmp_path_factory):
    """A tiny timm ViT in the TimmWrapper layout (config.json with architecture and model_args), 32 px, 1000 labels."""
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    torch.manual_seed(0)
    config = TimmWrapperConfig(architecture="vit_tiny_patch16_224", num_labels=1000,
                               model_args={"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1,
                                           "num_heads": 2},
                               pretrained_cfg={"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3,
                                               "interpolation": "bicubic", "crop_pct": 0.9})
    path = tmp_path_factory.mktemp("timm") / "tiny"
    TimmWrapperForImageClassification(config).save_pretrained(path)
    return path


def built_at(source, size, labels=("a", "b", "c"), tuning="full"):
    recipe = ModelRecipe(name=str(source), tuning=tuning)
    spec = resolve_input_spec(recipe, DataRecipe(image_size=size))
    return build_model(recipe, spec, list(labels))


def test_vit_at_another_size_resamples_its_position_table_as_timm_does(tiny_pretrained_dirs):
    from transformers import ViTForImageClassification

    original = ViTForImageClassification.from_pretrained(tiny_pretrained_dirs["vit"]).vit.embeddings.position_embeddings
    built = built_at(tiny_pretrained_dirs["vit"], 48)
    expected = resample_abs_pos_embed(original.detach(), new_size=[6, 6], old_size=[4, 4], num_prefix_tokens=1)
    assert torch.equal(built.model.vit.embeddings.position_embeddings.detach(), expected)
    assert built.model.config.image_size == 48 and "input size: 32 -> 48 px" in " ".join(built.notes)
    assert built.notes[0].startswith("classifier replaced: 1000 classes of the checkpoint -> 3 (a, b, c)")


@pytest.mark.parametrize("layout", ["vit", "timm"])
def test_a_model_built_at_another_size_saves_and_reloads_with_plain_transformers_at_that_size(
        layout, tiny_pretrained_dirs, tiny_timm_dir, tmp_path):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    source = tiny_pretrained_dirs["vit"] if layout == "vit" else tiny_timm_dir
    built = built_at(source, 48)
    randomise_head(built.model).eval()
    pixels = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        logits = built.model(pixel_values=pixels).logits
    built.model.save_pretrained(tmp_path / "saved")
    built.image_processor.save_pretrained(tmp_path / "saved")
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "saved").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=pixels).logits, logits, rtol=0, atol=0)
    processor = AutoImageProcessor.from_pretrained(tmp_path / "saved")
    out = processor(images=[torch.zeros(3, 64, 80, dtype=torch.uint8).numpy().transpose(1, 2, 0)],
                    return_tensors="pt")["pixel_values"]
    assert tuple(out.shape[-2:]) == (48, 48)


@pytest.mark.parametrize("layout", ["vit", "swin", "timm"])
def test_a_new_head_starts_at_zero_so_the_first_loss_is_log_classes_and_the_backbone_trains_from_step_two(
        layout, tiny_pretrained_dirs, tiny_timm_dir):
    """The ViT paper's fine-tuning init (a zero D x K layer): no random head's noise in the first gradients."""
    from hfvision.models.module_tree import find_classifier

    source = tiny_timm_dir if layout == "timm" else tiny_pretrained_dirs[layout]
    model = built_at(source, 32, labels=[f"class_{i}" for i in range(5)]).model.train()
    head = find_classifier(model)
    assert all(torch.count_nonzero(p) == 0 for p in head.parameters())
    backbone = [p for p in model.parameters() if all(p is not q for q in head.parameters())]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    pixels, labels = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.arange(8) % 5
    for step in (1, 2):
        loss = torch.nn.functional.cross_entropy(model(pixel_values=pixels).logits, labels)
        loss.backward()
        moved = sum(int(p.grad is not None and torch.count_nonzero(p.grad) > 0) for p in backbone)
        if step == 1:
            assert loss.item() == pytest.approx(np.log(5), abs=1e-6)
            assert moved == 0
        else:
            assert moved > len(backbone) // 2
        optimizer.step()
        optimizer.zero_grad()


def test_sizes_a_checkpoint_cannot_take_are_one_line(tiny_pretrained_dirs):
    with pytest.raises(HfvisionError, match=r"^data.image_size: vit takes sizes that are multiples of 8 .* got 50$"):
        built_at(tiny_pretrained_dirs["vit"], 50)
    with pytest.raises(HfvisionError, match=r"^data.image_size: swin takes sizes that are multiples of 8"):
        built_at(tiny_pretrained_dirs["swin"], 36)
    assert built_at(tiny_pretrained_dirs["swin"], 48).model.config.image_size == 48


@pytest.mark.slow
def test_training_at_another_size_finishes_and_best_loads_in_a_pipeline(tiny_pretrained_dirs, tmp_path, capsys):
    from PIL import Image
    from transformers import pipeline

    from hfvision.pipeline import fit

    out = tmp_path / "run"
    settings = {"model.name": str(tiny_pretrained_dirs["vit"]), "data.image_size": 48, "model.tuning": "full"}
    metrics = fit(load_recipe(None, tiny_recipe_overrides(out, **settings)))
    logged = capsys.readouterr().out
    assert "classifier replaced: 1000 classes of the checkpoint -> 6" in logged and "MISMATCH" not in logged
    assert metrics["model"]["flops_per_image"] > 0 and json.loads((out / "best" / "config.json").read_text())[
        "image_size"] == 48
    classify = pipeline("image-classification", model=str(out / "best"))
    result = classify(Image.new("RGB", (70, 50), (200, 30, 30)))
    assert len(result) == 5 and result[0]["label"] in metrics["test"]["per_class"]


# ------------------------------------------------------------------------------------------ the real ViT-Ti/16


def known_answer_photos():
    with (SAMPLES / "labels.csv").open() as f:
        return list(csv.DictReader(f))


# As pipeline() does: the transformers layout squashes to 224 (15/17; misses: cock -> hen, cocktail shaker -> wine
# bottle), the timm layout keeps the central 0.9 of the shorter side (crop_pct) and gets 17/17.
@needs_shared
@pytest.mark.parametrize("model_dir,at_least", [(REAL_VIT, 15), (REAL_TIMM, 17)])
def test_the_real_pretrained_model_knows_the_imagenet_photos_through_hfvisions_path(model_dir, at_least):
    from hfvision.data.images import load_pixels
    from hfvision.data.transforms import BatchPreprocessor
    from hfvision.models.factory import load_model_for_inference

    built = load_model_for_inference(str(model_dir))
    rows = known_answer_photos()
    preprocess = BatchPreprocessor(built.spec)
    right = []
    with torch.no_grad():
        for row in rows:
            pixels = load_pixels(SAMPLES / row["file"], built.spec.decode_size, crop_pct=built.spec.crop_pct)
            logits = built.model(pixel_values=preprocess.resize_and_normalize(pixels)).logits
            right.append(int(logits.argmax(-1)) == int(row["label_index"]))
    assert sum(right) >= at_least, [row["label"] for row, ok in zip(rows, right) if not ok]


@needs_shared
@pytest.mark.parametrize("model_dir", [REAL_VIT, REAL_TIMM])
def test_the_real_vit_tiny_at_112_px_takes_112_px_inputs_and_reloads_the_same(model_dir, tmp_path):
    from transformers import AutoModelForImageClassification

    built = built_at(model_dir, 112, labels=[f"class_{i}" for i in range(10)])
    randomise_head(built.model).eval()
    pixels = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        logits = built.model(pixel_values=pixels).logits
    assert logits.shape == (2, 10)
    built.model.save_pretrained(tmp_path / "saved")
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "saved").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=pixels).logits, logits, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------ the resize policy


def smooth_photo(path, width, height, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(small).resize((width, height), Image.BICUBIC).save(path, quality=90)


def assert_decoded_like(processor, spec, std, tmp_path):
    """hfvision's decode path and ``processor`` on three generated photos: within 4 levels (PIL's and torch's
    antialiased bilinear), in pixel units."""
    from PIL import Image

    from hfvision.data.images import load_pixels
    from hfvision.data.transforms import BatchPreprocessor

    for i, (w, h) in enumerate([(400, 300), (300, 500), (640, 480)]):
        path = tmp_path / f"photo{i}.jpg"
        smooth_photo(path, w, h, seed=i)
        theirs = processor(Image.open(path).convert("RGB"), return_tensors="pt")["pixel_values"]
        ours = BatchPreprocessor(spec).resize_and_normalize(load_pixels(path, spec.decode_size, crop_pct=spec.crop_pct))
        assert ours.shape == theirs.shape == (1, 3, 64, 64)
        assert ((ours - theirs).abs() * torch.tensor(std).view(1, 3, 1, 1)).max() <= 4 / 255 + 1e-6


@pytest.mark.parametrize("crop_pct,mode", [(0.9, "center"), (None, "squash")])
def test_decoded_pixels_match_the_timm_processors_own_output(crop_pct, mode, tmp_path):
    from transformers import TimmWrapperImageProcessor

    from hfvision.models.factory import processor_spec

    cfg = {"input_size": [3, 64, 64], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear",
           "crop_pct": crop_pct or 1.0, "crop_mode": mode}
    processor = TimmWrapperImageProcessor(pretrained_cfg=cfg, architecture="vit_tiny_patch16_224")
    spec = processor_spec(processor)
    assert spec.crop_pct == crop_pct
    assert_decoded_like(processor, spec, [0.5] * 3, tmp_path)


def test_large_photos_are_decoded_at_most_at_the_input_size(tmp_path):
    from datasets import Dataset, Image as ImageFeature

    from hfvision.data.sources import decode_split

    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"big{i}.jpg"))
        smooth_photo(paths[-1], 2000, 1500, seed=i)
    ds = Dataset.from_dict({"image": paths, "label": [0, 1, 0]}).cast_column("image", ImageFeature())
    squashed = decode_split(ds, "image", "label", 224)
    cropped = decode_split(ds, "image", "label", 224, crop_pct=0.9)
    assert squashed.pixels.shape == cropped.pixels.shape == (3, 3, 224, 224)  # not (3, 3, 1500, 2000)


@pytest.mark.parametrize("kind", ["squash (ViTImageProcessor)", "shorter side + centre crop (BitImageProcessor)",
                                  "crop_pct (ConvNeXtImageProcessor)"])
def test_decoded_pixels_match_transformers_processors_own_output(kind, tmp_path):
    from PIL import Image
    from transformers import BitImageProcessor, ConvNextImageProcessor, ViTImageProcessor

    from hfvision.models.factory import processor_spec

    if kind.startswith("squash"):
        processor = ViTImageProcessor(size={"height": 64, "width": 64}, resample=Image.BILINEAR)
    elif kind.startswith("crop_pct"):  # the shorter side to 64 / (8/9) = 72, then the central 64
        processor = ConvNextImageProcessor(size={"shortest_edge": 64}, crop_pct=8 / 9, resample=Image.BILINEAR)
    else:  # resize the shorter side to 72, crop the central 64: the central 64/72 of the shorter side
        processor = BitImageProcessor(size={"shortest_edge": 72}, crop_size={"height": 64, "width": 64},
                                      resample=Image.BILINEAR, do_convert_rgb=True)
    spec = processor_spec(processor)
    assert spec.image_size == 64 and spec.crop_pct == pytest.approx(None if kind.startswith("squash") else 64 / 72)
    assert_decoded_like(processor, spec, processor.image_std, tmp_path)


@pytest.mark.parametrize("crop_pct", [None, 0.875])
def test_jpeg_draft_decoding_of_a_large_photo_is_within_rounding_of_the_full_decode(crop_pct, tmp_path):
    """2000x1500 for a 224 px model: decoded at 1/4 scale (500x375) by JPEG draft, then resized."""
    from hfvision.data.images import decode_fitted, fit_to_input, load_rgb

    path = tmp_path / "large.jpg"
    smooth_photo(path, 2000, 1500)
    from PIL import Image
    with Image.open(path) as image:
        image.draft(None, (256, 256))
        assert image.size == (500, 375)
    drafted = decode_fitted(path, 224, crop_pct).astype(int)
    full = fit_to_input(load_rgb(path), 224, crop_pct).astype(int)
    assert drafted.shape == full.shape == (224, 224, 3)
    assert np.abs(drafted - full).max() <= 3 and np.abs(drafted - full).mean() < 0.5


def test_the_recipe_chooses_the_resize_policy(tiny_pretrained_dirs, tiny_timm_dir):
    from hfvision.models.factory import DEFAULT_CROP_PCT

    def spec(checkpoint, **data):
        return resolve_input_spec(ModelRecipe(name=str(checkpoint)), DataRecipe(**data))

    vit = tiny_pretrained_dirs["vit"]
    assert spec(vit).crop_pct is None  # the tiny ViT's processor squashes
    assert spec(vit, resize="center_crop").crop_pct == DEFAULT_CROP_PCT
    assert spec(vit, resize="center_crop", crop_pct=0.5).crop_pct == 0.5
    assert spec(tiny_timm_dir).crop_pct == 0.9  # the timm checkpoint's crop_pct
    assert spec(tiny_timm_dir, resize="center_crop").crop_pct == 0.9
    assert spec(tiny_timm_dir, resize="squash").crop_pct is None
    scratch = resolve_input_spec(ModelRecipe(name="scratch_vit"), DataRecipe(resize="center_crop", crop_pct=0.75))
    assert scratch.crop_pct == 0.75
