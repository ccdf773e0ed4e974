"""The feature cache for head-only tuning: the cut, exactness, views, the key and the on-disk store."""

import numpy as np
import pytest
import torch
from conftest import randomise_head
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage

import hfvision.training.feature_cache as feature_cache
from hfvision.data import store as image_store
from hfvision.accelerator import make_accelerator
from hfvision.data.sources import decode_splits, load_raw, split_dataset
from hfvision.data.transforms import BatchPreprocessor
from hfvision.errors import RecipeError
from hfvision.models.factory import build_model, resolve_input_spec
from hfvision.models.module_tree import find_classifier
from hfvision.models.tuning import set_train_mode
from hfvision.recipe import AugmentRecipe, DataRecipe, ModelRecipe, load_recipe
from hfvision.spec import InputSpec
from hfvision.training.feature_cache import (
    CachedFeatures,
    HeadOnFeatures,
    classifier_inputs,
    compute_features,
    load_or_compute_features,
    plan_feature_cache,
)

LABELS = [f"class_{i}" for i in range(6)]
TINY_SCRATCH = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 1,
                "num_attention_heads": 2, "intermediate_size": 64}
NO_AUGMENT = AugmentRecipe(random_crop_padding=0, horizontal_flip=False)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HFVISION_CACHE", str(tmp_path / "feature_cache"))
    return tmp_path / "feature_cache"


def entries(cache_dir):
    """The feature-cache entries (the decoded-image stores live beside them, in stores/)."""
    return [path for path in cache_dir.iterdir() if path.name != "stores"]


def tiny_model(name="scratch_vit", config=None, tuning="head_only", seed=0):
    torch.manual_seed(seed)
    config = TINY_SCRATCH if config is None and name == "scratch_vit" else (config or {})
    model_recipe = ModelRecipe(name=name, tuning=tuning, config=config)
    built = build_model(model_recipe, resolve_input_spec(model_recipe, DataRecipe()), LABELS)
    randomise_head(built.model, seed)  # a checkpoint's new head is zero: every logit would match
    return built


def images(n=40, seed=0, size=32):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8))


FAMILIES = {
    "scratch_vit_cls": lambda dirs: tiny_model(),
    "scratch_vit_mean_pooling": lambda dirs: tiny_model(config={**TINY_SCRATCH, "pooling": "mean"}),
    "resnet18_cifar": lambda dirs: tiny_model("resnet18_cifar", {"stage_widths": [8, 16], "blocks_per_stage": [1, 1]}),
    "vit": lambda dirs: tiny_model(str(dirs["vit"])),
    "swin": lambda dirs: tiny_model(str(dirs["swin"])),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_the_head_on_cached_features_gives_the_models_logits(family, tiny_pretrained_dirs):
    built = FAMILIES[family](tiny_pretrained_dirs)
    model, preprocessor = built.model.eval(), BatchPreprocessor(built.spec, NO_AUGMENT)
    pixels = images()
    with torch.no_grad():
        expected = model(pixel_values=preprocessor.resize_and_normalize(pixels)).logits
        features = compute_features(model, pixels, preprocessor, make_accelerator(), batch_size=16)
        cached_logits = HeadOnFeatures(model)(features[0]).logits
    assert features.shape[:2] == (1, 40)
    torch.testing.assert_close(cached_logits, expected, rtol=1e-5, atol=1e-5)


def test_head_only_training_mode_runs_the_frozen_part_as_at_inference(tiny_pretrained_dirs):
    """Drop path and dropout in the frozen part would make uncached head-only training differ from the cache."""
    from transformers import SwinConfig, SwinForImageClassification

    torch.manual_seed(0)
    model = SwinForImageClassification(SwinConfig(image_size=32, patch_size=2, window_size=4, embed_dim=16,
                                                  depths=[1, 1], num_heads=[1, 2], drop_path_rate=0.5,
                                                  hidden_dropout_prob=0.3, num_labels=6))
    pixels = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model.eval()(pixels).logits
        model.requires_grad_(False)
        find_classifier(model).requires_grad_(True)
        set_train_mode(model)
        assert model.training and model.classifier.training
        torch.testing.assert_close(model(pixels).logits, expected)
        model.swin.encoder.layers[-1].requires_grad_(True)  # head and last stage: its drop path trains with it
        set_train_mode(model)
        assert model.swin.encoder.layers[-1].blocks[0].drop_path.training
        assert not model.swin.encoder.layers[0].blocks[0].drop_path.training


def test_augmented_views_are_the_classifier_inputs_of_seeded_augmentations():
    built = tiny_model()
    model = built.model.eval()
    augment = AugmentRecipe(random_crop_padding=4, horizontal_flip=True)
    preprocessor = BatchPreprocessor(built.spec, augment)
    pixels = images(20)
    features = compute_features(model, pixels, preprocessor, make_accelerator(), batch_size=8, views=3, seed=7)
    assert features.shape[:2] == (3, 20)
    for view in range(3):
        for start in (0, 8, 16):
            generator = feature_cache._view_generator(7, view, start)
            x, _ = preprocessor(pixels[start:start + 8], torch.zeros(len(pixels[start:start + 8])), train=True,
                                generator=generator)
            with torch.no_grad():
                torch.testing.assert_close(features[view, start:start + 8], classifier_inputs(model, x))
    assert not torch.allclose(features[0], features[1])
    dataset = CachedFeatures(features, torch.arange(20))
    for epoch in range(5):
        dataset.set_epoch(epoch)
        torch.testing.assert_close(dataset[3][0], features[epoch % 3, 3])


# ----------------------------------------------------------------------------------------------
# The on-disk cache: a hit reuses, each input of the key invalidates


def write_source(path, seed, sizes=(32,)):
    """A tiny Parquet image dataset (train + test) that ``load_dataset`` reads, images of the given sizes."""
    rng = np.random.default_rng(seed)
    features = Features({"img": Image(), "label": ClassLabel(names=LABELS)})
    for split, n in (("train", 60), ("test", 12)):
        rows = {"img": [PILImage.fromarray(rng.integers(0, 256, (s, s, 3), dtype=np.uint8))
                        for s in np.resize(sizes, n)], "label": [i % 6 for i in range(n)]}
        Dataset.from_dict(rows, features=features).to_parquet(str(path / f"{split}.parquet"))
    return str(path)


SOURCES = {"a": 0, "b": 1}  # two data sources: seeds of their generated images


def split_pixels(tmp_path, source, split, decode_size, max_train_samples):
    path = tmp_path / source
    if not path.exists():
        path.mkdir()
        write_source(path, SOURCES[source], sizes=(32, 40))  # mixed sizes: the decode size matters
    recipe = DataRecipe(dataset=str(path), val_fraction=0.2, max_train_samples=max_train_samples)
    splits, image_column, label_column, names = split_dataset(load_raw(str(path)), recipe, seed=0)
    return getattr(decode_splits(splits, image_column, label_column, decode_size, names), split).pixels


class Counting:
    """Counts forward passes of a model."""

    def __init__(self, model):
        self.calls = 0
        model.register_forward_pre_hook(lambda module, args, kwargs: setattr(self, "calls", self.calls + 1),
                                        with_kwargs=True)


BASE = dict(source="a", split="train", max_train_samples=None, decode_size=32, mean=(0.5, 0.5, 0.5), size=32,
            crop=4, views=2, seed=0, precision="no")
CHANGES = {  # one per input of the cache key
    "frozen_weights": {},  # changed below: one backbone weight
    "data_source": {"source": "b"},
    "split": {"split": "validation"},
    "sample_limits": {"max_train_samples": 30},
    "decode_size": {"decode_size": 24},
    "normalisation_mean_std": {"mean": (0.4, 0.5, 0.5)},
    "normalisation_input_size": {"size": 48},
    "augmentation": {"crop": 2},
    "number_of_views": {"views": 3},
    "views_seed": {"seed": 1},
    "precision": {"precision": "bf16"},
    "format_version": {},  # changed below
    "preprocessing_version": {},  # changed below
}


def cached(tmp_path, model, settings):
    pixels = split_pixels(tmp_path, settings["source"], settings["split"], settings["decode_size"],
                          settings["max_train_samples"])
    spec = InputSpec(settings["size"], settings["mean"], (0.5, 0.5, 0.5))
    preprocessor = BatchPreprocessor(spec, AugmentRecipe(random_crop_padding=settings["crop"]))
    accelerator = make_accelerator(mixed_precision=settings["precision"])
    return load_or_compute_features(model, pixels, preprocessor, accelerator, batch_size=32,
                                    views=settings["views"], seed=settings["seed"], label="train")


@pytest.mark.parametrize("changed", CHANGES)
def test_each_input_of_the_key_invalidates_the_cache(changed, tmp_path, cache_dir, monkeypatch):
    model = tiny_model().model
    counter = Counting(model)
    first = cached(tmp_path, model, BASE)
    calls = counter.calls
    assert calls > 0 and len(list(entries(cache_dir))) == 1
    torch.testing.assert_close(cached(tmp_path, model, BASE), first, rtol=0, atol=0)  # a hit: read, not run
    assert counter.calls == calls
    if changed == "frozen_weights":
        with torch.no_grad():
            next(p for name, p in model.named_parameters() if not name.startswith("classifier")).view(-1)[0] += 1e-3
    if changed == "format_version":
        monkeypatch.setattr(feature_cache, "FORMAT_VERSION", feature_cache.FORMAT_VERSION + 1)
    if changed == "preprocessing_version":  # decoding or resizing code changed: an older entry is never served
        monkeypatch.setattr(image_store, "PREPROCESSING_VERSION", image_store.PREPROCESSING_VERSION + 1)
    cached(tmp_path, model, {**BASE, **CHANGES[changed]})
    assert counter.calls > calls, "a changed input must recompute the features"
    assert len(list(entries(cache_dir))) == 2


def test_the_heads_weights_and_the_run_seed_without_views_do_not_invalidate(tmp_path, cache_dir):
    model = tiny_model().model
    counter = Counting(model)
    exact = {**BASE, "views": None, "crop": 0}
    cached(tmp_path, model, exact)
    calls = counter.calls
    with torch.no_grad():
        model.classifier.weight.add_(1.0)
    cached(tmp_path, model, {**exact, "seed": 5})
    assert counter.calls == calls and len(list(entries(cache_dir))) == 1


def test_the_resized_crop_settings_are_in_the_key_of_augmented_views():
    def key(**augment):
        preprocessor = BatchPreprocessor(InputSpec(32, (0.5,) * 3, (0.5,) * 3),
                                         AugmentRecipe(random_crop_padding=0, **augment))
        return feature_cache.features_fingerprint(frozen_part="f", pixels="p", preprocessor=preprocessor,
                                                  precision="no", views=2, seed=0)

    keys = [key(), key(random_resized_crop=True), key(random_resized_crop=True, random_resized_crop_scale=[0.5, 1.0]),
            key(random_resized_crop=True, random_resized_crop_ratio=[1.0, 1.0])]
    assert len(set(keys)) == 4


def test_bf16_features_are_computed_under_autocast(tmp_path):
    model = tiny_model().model
    preprocessor = BatchPreprocessor(tiny_model().spec, NO_AUGMENT)
    pixels = images(8)
    fp32 = compute_features(model, pixels, preprocessor, make_accelerator(), batch_size=8)
    bf16 = compute_features(model, pixels, preprocessor, make_accelerator(mixed_precision="bf16"), batch_size=8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = classifier_inputs(model.eval(), preprocessor.resize_and_normalize(pixels))
    torch.testing.assert_close(bf16[0], expected, rtol=0, atol=0)
    assert not torch.equal(bf16[0].float(), fp32[0])


# ----------------------------------------------------------------------------------------------
# Recipe keys


def test_auto_uses_the_cache_only_when_exact_or_views_are_asked_for():
    head_only = ["model.tuning=head_only"]
    no_augment = ["data.augment.random_crop_padding=0", "data.augment.horizontal_flip=false"]
    assert plan_feature_cache(load_recipe(None, head_only + no_augment)).enabled
    assert plan_feature_cache(load_recipe(None, head_only + no_augment)).views is None
    assert not plan_feature_cache(load_recipe(None, head_only)).enabled  # default crop + flip
    assert plan_feature_cache(load_recipe(None, head_only + ["data.cached_views=4"])).views == 4
    assert not plan_feature_cache(load_recipe(None, no_augment)).enabled  # full tuning
    assert not plan_feature_cache(load_recipe(None, head_only + no_augment + ["train.feature_cache=off"])).enabled
    mixup = plan_feature_cache(load_recipe(None, head_only + no_augment + ["data.augment.mixup_alpha=0.2"]))
    assert not mixup.enabled and "mixup" in mixup.reason
    resized_crop = head_only + no_augment + ["data.augment.random_resized_crop=true"]
    assert not plan_feature_cache(load_recipe(None, resized_crop)).enabled  # a random augmentation like the others
    assert "(random resized crop)" in plan_feature_cache(load_recipe(None, resized_crop)).reason
    assert plan_feature_cache(load_recipe(None, resized_crop + ["data.cached_views=3"])).views == 3


@pytest.mark.parametrize("overrides, message", [
    (["train.feature_cache=on"], "train.feature_cache: caches the frozen backbone of model.tuning: head_only runs"),
    (["model.tuning=head_only", "train.feature_cache=on"], "needs data.cached_views: K"),
    (["model.tuning=head_only", "train.feature_cache=on", "data.augment.random_crop_padding=0",
      "data.augment.horizontal_flip=false", "data.augment.random_resized_crop=true"],
     "train.feature_cache: on with random train-time augmentation (random resized crop"),
    (["model.tuning=head_only", "train.feature_cache=on", "data.cached_views=2", "data.augment.cutmix_alpha=1"],
     "mixup/cutmix"),
    (["model.tuning=head_only", "data.cached_views=2", "data.augment.random_crop_padding=0",
      "data.augment.horizontal_flip=false"], "data.cached_views: there is no random train-time augmentation"),
    (["model.tuning=head_only", "train.feature_cache=off", "data.cached_views=2"],
     "data.cached_views: only used with the feature cache"),
    (["data.cached_views=0"], "data.cached_views: expected a positive integer"),
    (["train.feature_cache=always"], "train.feature_cache: 'always' is not one of auto, on, off"),
])
def test_feature_cache_keys_reject_what_cannot_work(overrides, message):
    with pytest.raises(RecipeError, match=message.replace("(", r"\(")):
        load_recipe(None, overrides)


def test_on_and_off_are_read_as_words_not_yaml_booleans(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: {tuning: head_only}\ntrain: {feature_cache: on}\n"
                    "data: {augment: {random_crop_padding: 0, horizontal_flip: false}}\n")
    assert load_recipe(path).train.feature_cache == "on"
    assert load_recipe(path, ["train.feature_cache=off"]).train.feature_cache == "off"


# ----------------------------------------------------------------------------------------------
# Wired into the pipeline: a cached run trains the same head, saves the whole model


def head_only_run(tmp_path, name, source, **overrides):
    from conftest import tiny_recipe_overrides

    from hfvision.pipeline import fit

    settings = {"model.name": str(source), "model.tuning": "head_only", "data.augment.random_crop_padding": 0,
                "data.augment.horizontal_flip": False, "train.epochs": 2, "train.learning_rate": 0.01, **overrides}
    out = tmp_path / name
    return fit(load_recipe(None, tiny_recipe_overrides(out, **settings))), out


@pytest.mark.slow
@pytest.mark.parametrize("family", ["vit", "swin"])  # the tiny Swin has drop path 0.1 in its frozen part
def test_cached_and_uncached_head_only_runs_train_the_same_head(family, tmp_path, tiny_pretrained_dirs):
    from safetensors.torch import load_file

    source = tiny_pretrained_dirs[family]
    plain, plain_dir = head_only_run(tmp_path, "plain", source, **{"train.feature_cache": "off"})
    cached_run, cached_dir = head_only_run(tmp_path, "cached", source, **{"train.feature_cache": "on"})
    assert not plain["feature_cache"]["enabled"] and cached_run["feature_cache"]["enabled"]
    plain_weights, cached_weights = load_file(plain_dir / "last/model.safetensors"), load_file(cached_dir / "last/model.safetensors")
    assert plain_weights.keys() == cached_weights.keys()
    for name, tensor in plain_weights.items():  # backbone bit for bit; the head to float tolerance
        torch.testing.assert_close(cached_weights[name], tensor, rtol=1e-4, atol=1e-5)
    assert not torch.equal(cached_weights["classifier.weight"], load_file(source / "model.safetensors")["classifier.weight"][:6])
    for a, b in zip(plain["history"], cached_run["history"]):
        assert a["val_accuracy"] == b["val_accuracy"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    assert plain["test"]["accuracy"] == cached_run["test"]["accuracy"]


@pytest.mark.slow
def test_epochs_cycle_through_the_cached_views(tmp_path, tiny_pretrained_dirs, monkeypatch):
    seen = []
    original = CachedFeatures.__getitem__

    def spy(self, index):
        if len(self.features) == 2:  # the training split's views; validation has one
            seen.append(self.view)
        return original(self, index)

    monkeypatch.setattr(CachedFeatures, "__getitem__", spy)
    metrics, _ = head_only_run(tmp_path, "views", tiny_pretrained_dirs["vit"], **{
        "train.epochs": 3, "data.cached_views": 2, "data.augment.random_crop_padding": 4})
    assert metrics["feature_cache"]["views"] == 2
    per_epoch = len(seen) // 3
    assert seen == [0] * per_epoch + [1] * per_epoch + [0] * per_epoch


@pytest.mark.slow
def test_best_of_a_cached_run_reloads_without_hfvision_and_gives_the_recorded_accuracy(tmp_path, tiny_pretrained_dirs):
    import json
    import subprocess
    import sys

    metrics, out = head_only_run(tmp_path, "cached", tiny_pretrained_dirs["vit"], **{"train.feature_cache": "on"})
    recipe = load_recipe(out / "recipe.yaml")
    splits, image_column, label_column, names = split_dataset(load_raw("synthetic"), recipe.data, recipe.seed)
    test = decode_splits(splits, image_column, label_column, 32, names).test
    torch.save({"pixels": test.pixels[:], "labels": test.labels}, tmp_path / "test.pt")
    child = f"""
import sys
sys.modules["hfvision"] = None  # any import of hfvision fails: plain transformers only
import json, torch
from transformers import AutoModelForImageClassification
model = AutoModelForImageClassification.from_pretrained({str(out / "best")!r}).eval()
processor = json.load(open({str(out / "best" / "preprocessor_config.json")!r}))
data = torch.load({str(tmp_path / "test.pt")!r})
mean = torch.tensor(processor["image_mean"])[None, :, None, None]
std = torch.tensor(processor["image_std"])[None, :, None, None]
with torch.no_grad():
    logits = model(pixel_values=(data["pixels"].float() / 255 - mean) / std).logits
print(json.dumps((logits.argmax(1) == data["labels"]).double().mean().item()))
"""
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == pytest.approx(metrics["test"]["accuracy"], abs=1e-9)
    assert json.loads((out / "metrics.json").read_text())["feature_cache"]["enabled"]


@pytest.mark.slow
def test_two_processes_each_compute_a_share_and_store_the_same_features(tmp_path, tiny_pretrained_dirs, cache_dir):
    import json
    import subprocess

    from conftest import REPO, script_command, script_env, tiny_recipe_overrides
    from safetensors.torch import load_file

    overrides = tiny_recipe_overrides(tmp_path / "ddp", **{
        "model.name": str(tiny_pretrained_dirs["vit"]), "model.tuning": "head_only", "train.feature_cache": "on",
        "data.augment.random_crop_padding": 0, "data.augment.horizontal_flip": False, "eval.batch_size": 150})
    (tmp_path / "recipe.yaml").write_text("seed: 42\n")  # the defaults; the overrides say the rest
    result = subprocess.run(script_command("finetune.py", tmp_path / "recipe.yaml", *overrides, nproc=2),
                            capture_output=True, text=True,
                            cwd=REPO, timeout=900, env={**script_env(), "HFVISION_CACHE": str(cache_dir)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "ddp" / "metrics.json").read_text())["feature_cache"]["enabled"]
    stored = {json.loads((entry / "meta.json").read_text())["split"]: load_file(entry / "features.safetensors")["features"]
              for entry in entries(cache_dir)}
    recipe = load_recipe(None, overrides)
    built = build_model(recipe.model, resolve_input_spec(recipe.model, recipe.data), LABELS)
    splits, image_column, label_column, names = split_dataset(load_raw("synthetic"), recipe.data, recipe.seed)
    data = decode_splits(splits, image_column, label_column, 32, names)
    preprocessor = BatchPreprocessor(built.spec, recipe.data.augment)
    assert (len(data.train), len(data.validation)) == (240, 120)  # chunks of 150: shares 1 + 1, and 1 + none
    for split in ("train", "validation"):
        expected = compute_features(built.model, getattr(data, split).pixels, preprocessor, make_accelerator(),
                                    batch_size=150)
        torch.testing.assert_close(stored[split], expected, rtol=1e-5, atol=1e-5)
