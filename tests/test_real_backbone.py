"""The real ImageNet-pretrained ViT-Ti/16 of ``../shared/models``, in both layouts (transformers'
``ViTForImageClassification`` and timm's, loaded as ``TimmWrapperForImageClassification``), through every tuning
mode and everything that comes after training: layer decay, the feature cache, Grad-CAM, rollout, PCA, the model
card, the demo and the Hub push. Skips without ``../shared``.

The runs are at 48 px (the 14 x 14 position table resampled to 3 x 3) on a few hundred generated shapes, so each is
seconds; what they check does not depend on the size."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, tiny_recipe_overrides
from PIL import Image

from hfvision.data.synthetic import CLASSES, make_images
from hfvision.recipe import load_recipe

SHARED_MODELS = REPO.parent / "shared" / "models"
LAYOUTS = {"transformers": SHARED_MODELS / "vit-tiny-patch16-224", "timm": SHARED_MODELS / "timm-vit_tiny_patch16_224"}
pytestmark = [pytest.mark.skipif(not all(p.is_dir() for p in LAYOUTS.values()), reason="../shared/models absent"),
              pytest.mark.slow]

SIZE = 48
WIDTH, DEPTH = 192, 12  # ViT-Ti/16
HEAD = WIDTH * len(CLASSES) + len(CLASSES)
# The mode's own settings; layer decay rides with full, as the recipes suggest it.
MODES = {
    "head_only": {"train.feature_cache": "on", "train.learning_rate": 3e-3},
    "head_and_last_stage": {"train.feature_cache": "off", "train.learning_rate": 1e-3},
    "lora": {"train.feature_cache": "off", "train.learning_rate": 1e-3},
    "full": {"train.feature_cache": "off", "train.learning_rate": 1e-3, "train.layer_decay": 0.5},
}


def train(layout, mode, out):
    from hfvision.pipeline import fit

    settings = {"model.name": str(LAYOUTS[layout]), "model.tuning": mode, "data.image_size": SIZE,
                "data.augment.random_crop_padding": 0, "data.augment.horizontal_flip": False,
                "data.max_train_samples": 192, "data.max_eval_samples": 64, "train.epochs": 2,
                "train.weight_decay": 0.0, **MODES[mode]}
    return fit(load_recipe(None, tiny_recipe_overrides(out, **settings)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{(layout, mode): (run dir, metrics)}, trained lazily, once per module."""
    root = tmp_path_factory.mktemp("real")
    done = {}

    def get(layout, mode):
        if (layout, mode) not in done:
            out = root / f"{layout}-{mode}"
            done[layout, mode] = out, train(layout, mode, out)
        return done[layout, mode]
    return get


def pretrained_state(layout):
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(LAYOUTS[layout])
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def canonical(name: str) -> str:
    """timm's and transformers' names of the ViT-Ti's parameters, in one vocabulary (transformers')."""
    for theirs, ours in (("timm_model.patch_embed.proj", "vit.embeddings.patch_embeddings.projection"),
                         ("timm_model.blocks.", "vit.layers."), ("timm_model.", "vit.")):
        name = name.replace(theirs, ours)
    return name


def changes(layout, best):
    """{parameter name: mean absolute change from the pretrained checkpoint} for the saved ``best/``."""
    from transformers import AutoModelForImageClassification

    before = pretrained_state(layout)
    after = AutoModelForImageClassification.from_pretrained(best).state_dict()
    return {canonical(name): (after[name] - before[name]).abs().mean().item() for name in after
            if name in before and before[name].shape == after[name].shape and after[name].is_floating_point()}


def encoder_param(changed, layer, kind):
    """The mean change of one weight of encoder block ``layer`` (``kind``: qkv or fc1), in either layout."""
    names = {"qkv": ("attention.q_proj.weight", "attn.qkv.weight"), "fc1": ("mlp.fc1.weight",)}[kind]
    return next(changed[f"vit.layers.{layer}.{n}"] for n in names if f"vit.layers.{layer}.{n}" in changed)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", MODES)
def test_each_tuning_mode_trains_what_it_says_on_the_real_backbone(runs, layout, mode):
    out, metrics = runs(layout, mode)
    total, trainable = metrics["model"]["parameters"], metrics["model"]["trainable_parameters"]
    assert metrics["model"]["image_size"] == SIZE and metrics["test"]["accuracy"] > 1 / len(CLASSES)
    changed = changes(layout, out / "best")
    patch = changed["vit.embeddings.patch_embeddings.projection.weight"]
    first, last = encoder_param(changed, 0, "fc1"), encoder_param(changed, DEPTH - 1, "fc1")
    if mode == "head_only":
        assert trainable == HEAD and metrics["feature_cache"]["enabled"]
        assert patch == first == last == 0.0  # the backbone is the checkpoint's, bit for bit
    elif mode == "head_and_last_stage":
        assert HEAD < trainable < total / 4 and not metrics["feature_cache"]["enabled"]
        assert patch == first == 0.0 and last > 0.0
    elif mode == "lora":
        # adapters on q/k/v (timm: the fused qkv) plus the head; best/ is merged, so only the adapted weights moved
        assert HEAD < trainable < total / 10
        assert patch == first == last == 0.0 and encoder_param(changed, 0, "qkv") > 0.0
    else:
        # layer decay 0.5 over 12 blocks: the patch embedding learns at 0.5^13 of the head's rate, block 0 at 0.5^12,
        # the last block at 0.5; under Adam the change per step follows the rate.
        assert trainable == total
        assert 0.0 < patch < first < last and first < 0.01 * last


@pytest.mark.parametrize("layout", LAYOUTS)
def test_best_loads_with_plain_transformers_at_the_trained_size_in_a_fresh_process(runs, layout, tmp_path):
    out, metrics = runs(layout, "full")
    image = make_images(1, SIZE, seed=3)[0][0]
    path = tmp_path / "shape.png"
    Image.fromarray(image).save(path)
    code = f"""
import sys
sys.modules['hfvision'] = None
from transformers import AutoModelForImageClassification, pipeline
model = AutoModelForImageClassification.from_pretrained({str(out / 'best')!r})
print(type(model).__name__)
print(pipeline("image-classification", model={str(out / 'best')!r})({str(path)!r})[0]["label"])
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    name, predicted = result.stdout.strip().splitlines()[-2:]
    assert name == {"transformers": "ViTForImageClassification", "timm": "TimmWrapperForImageClassification"}[layout]
    assert predicted in CLASSES


@pytest.mark.parametrize("layout", LAYOUTS)
def test_explanations_pca_card_demo_and_push_work_on_the_trained_real_model(runs, layout, monkeypatch):
    from huggingface_hub import ModelCard

    from hfvision.explain.api import heatmaps
    from hfvision.explain.pca import pooled_features
    from hfvision.hub import push_to_hub
    from hfvision.models.factory import load_model_for_inference

    out, metrics = runs(layout, "full")
    built = load_model_for_inference(str(out / "best"))
    assert built.spec.image_size == SIZE
    images = torch.from_numpy(make_images(4, SIZE, seed=5)[0]).permute(0, 3, 1, 2).contiguous()
    for method in ("gradcam", "rollout", "scorecam", "occlusion"):
        heat, classes, pixels = heatmaps(built.model, built.spec, images, method)
        assert heat.shape == (4, SIZE, SIZE) and np.isfinite(heat).all() and heat.max() == pytest.approx(1.0)
        assert heat.std(axis=(1, 2)).min() > 0  # a map, not a constant
    features = pooled_features(built.model, [pixels])
    assert features.shape == (4, WIDTH)

    card = ModelCard.load(out / "best" / "README.md")
    accuracy = next(r for r in card.data.eval_results if r.metric_type == "accuracy")
    assert accuracy.metric_value == metrics["test"]["accuracy"] and card.data.pipeline_tag == "image-classification"

    sys.path.insert(0, str(REPO))
    import app
    scores, overlay = app.predict(images[0].permute(1, 2, 0).numpy(), str(out / "best"), "gradcam")
    assert len(scores) == 5 and set(scores) <= set(CLASSES)  # top-5 of the 6 classes, by name
    assert max(scores, key=scores.get) == CLASSES[classes[0]]  # the class the explain path predicted
    assert overlay.size[0] == overlay.size[1] > SIZE

    class RecordingApi:
        calls = []

        def create_repo(self, repo_id, **kwargs):
            self.calls.append(repo_id)

        def upload_folder(self, **kwargs):
            self.calls.append(sorted(os.listdir(kwargs["folder_path"])))
            return type("Commit", (), {"commit_url": "https://hub.example/c/1"})()

    api = RecordingApi()
    assert push_to_hub(out, "someone/vit-tiny-shapes", api=api) == "https://hub.example/c/1"
    assert api.calls[0] == "someone/vit-tiny-shapes"
    config = json.loads((out / "best" / "config.json").read_text())
    if layout == "timm":  # timm's processor is the config's pretrained_cfg, as on the Hub
        assert {"README.md", "config.json", "model.safetensors"} <= set(api.calls[1])
        assert config["label_names"] == list(CLASSES) and config["pretrained_cfg"]["input_size"] == [3, SIZE, SIZE]
    else:
        assert {"README.md", "config.json", "model.safetensors", "preprocessor_config.json"} <= set(api.calls[1])
        assert list(config["id2label"].values()) == list(CLASSES) and config["image_size"] == SIZE
