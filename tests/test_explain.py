import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, run_cli_in_process, tiny_recipe_overrides
from PIL import Image
from torch import nn
from transformers import (
    AutoModelForImageClassification,
    SwinConfig,
    SwinForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

from hfvision import (
    ResNetCifarConfig,
    ResNetCifarForImageClassification,
    ScratchViTConfig,
    ScratchViTForImageClassification,
)
from hfvision.data.synthetic import CLASSES, make_images
from hfvision.explain.api import first_index_per_class, heatmaps, pca_figure, synthetic_localization
from hfvision.explain.gradcam import GradCam, TokenGrid, _norm_with_constant_scale, find_target
from hfvision.explain.rollout import attention_rollout
from hfvision.spec import InputSpec

NORM = InputSpec(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def family_models():
    torch.manual_seed(0)
    scratch = dict(image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_labels=4)
    return {
        "scratch_vit": ScratchViTForImageClassification(ScratchViTConfig(**scratch)),
        "scratch_vit_registers_rope": ScratchViTForImageClassification(ScratchViTConfig(
            **scratch, num_registers=3, position_embedding="rope")),
        "scratch_vit_mean": ScratchViTForImageClassification(ScratchViTConfig(**scratch, pooling="mean")),
        "vit": ViTForImageClassification(ViTConfig(image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                                   num_attention_heads=2, intermediate_size=64, num_labels=4)),
        "swin": SwinForImageClassification(SwinConfig(image_size=32, patch_size=2, window_size=4, embed_dim=16,
                                                      depths=[1, 1, 1], num_heads=[1, 2, 4], num_labels=4)),
        "resnet18_cifar": ResNetCifarForImageClassification(ResNetCifarConfig(num_labels=4, stage_widths=[8, 16, 32, 64])),
    }


@pytest.mark.parametrize("family", list(family_models()))
def test_heatmaps_have_input_size_are_bounded_and_batch_independent(family):
    model = family_models()[family].eval()
    pixels = torch.randn(3, 3, 32, 32)
    cam = GradCam(model)
    heat, target = cam(pixels)
    assert heat.shape == (3, 32, 32) and torch.isfinite(heat).all()
    assert heat.min() >= 0 and heat.max() <= 1 + 1e-6
    alone, _ = cam(pixels[1:2], target[1:2])
    torch.testing.assert_close(alone[0], heat[1], rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # the hook is a pass-through: logits are unchanged and it is removed afterwards
        assert torch.equal(model(pixel_values=pixels).logits.argmax(1), target)
    assert not find_target(model).module._forward_hooks


def test_target_layers_per_family():
    models = family_models()
    assert find_target(models["scratch_vit"]).module is models["scratch_vit"].vit.blocks[-1].norm1
    assert find_target(models["scratch_vit_registers_rope"]).prefix_tokens == 4
    assert find_target(models["scratch_vit_mean"]).module is models["scratch_vit_mean"].vit.blocks[-1].norm1
    vit_target = find_target(models["vit"])
    assert vit_target.module is models["vit"].vit.layers[-1].layernorm_before
    assert find_target(models["swin"]).module is models["swin"].swin.encoder.layers[-1]
    assert find_target(models["resnet18_cifar"]).module is models["resnet18_cifar"].resnet.stages[-1]


@pytest.mark.parametrize("norm", [nn.LayerNorm(6), nn.RMSNorm(6)], ids=["layernorm", "rmsnorm"])
def test_norm_rule_keeps_values_and_holds_the_scale_constant(norm):
    """The LN rule: same forward values; backward = the norm's affine map divided by a constant scale."""
    torch.manual_seed(0)
    with torch.no_grad():
        norm.weight.normal_()
        if getattr(norm, "bias", None) is not None:
            norm.bias.normal_()
    x = torch.randn(3, 5, 6, requires_grad=True)
    upstream = torch.randn(3, 5, 6)
    handle = norm.register_forward_hook(_norm_with_constant_scale)
    out = norm(x)
    handle.remove()
    torch.testing.assert_close(out, norm(x))
    (grad,) = torch.autograd.grad((out * upstream).sum(), x)
    weighted = upstream * norm.weight
    if isinstance(norm, nn.LayerNorm):  # d/dx (x - mean x) / s * w with s constant
        scale = (x.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()
        expected = (weighted - weighted.mean(-1, keepdim=True)) / scale
    else:
        expected = weighted / (x.pow(2).mean(-1, keepdim=True) + torch.finfo(x.dtype).eps).sqrt()
    torch.testing.assert_close(grad, expected.detach())


def test_norm_rule_changes_transformer_maps_only():
    models = family_models()
    pixels = torch.randn(2, 3, 32, 32)
    for name, changes in (("scratch_vit", True), ("swin", True), ("resnet18_cifar", False)):
        model = models[name].eval()
        with_rule, target = GradCam(model)(pixels)
        without, _ = GradCam(model, constant_norm_scale=False)(pixels, target)
        assert (not torch.allclose(with_rule, without, atol=1e-4)) == changes, name


def test_swin_tokens_become_the_models_own_grid():
    """No stripes: our token -> grid view equals the (B, C, h, w) map Swin itself reports for its last stage."""
    model = family_models()["swin"].eval()
    captured = []
    handle = model.swin.encoder.layers[-1].register_forward_hook(lambda m, i, o: captured.append(o[0] if isinstance(o, tuple) else o))
    out = model(pixel_values=torch.randn(2, 3, 32, 32), output_hidden_states=True)
    handle.remove()
    grid = TokenGrid()(captured[0], (4, 4))
    torch.testing.assert_close(grid, out.reshaped_hidden_states[-1])


def test_named_layer_and_rollout():
    model = family_models()["scratch_vit"].eval()
    pixels = torch.randn(2, 3, 32, 32)
    heat, _ = GradCam(model, layer="vit.blocks.0.norm1")(pixels)
    assert heat.shape == (2, 32, 32)
    heat, _ = GradCam(family_models()["resnet18_cifar"], layer="resnet.stages.2")(pixels)
    assert heat.shape == (2, 32, 32)
    with pytest.raises(ValueError, match="layer 'nope' is not a module"):
        GradCam(model, layer="nope")
    for name in ("scratch_vit", "vit"):
        maps = attention_rollout(family_models()[name], pixels)
        assert maps.shape == (2, 32, 32) and maps.min() >= 0 and maps.max() <= 1


@pytest.fixture(scope="module")
def trained_vit(tmp_path_factory):
    """A small ScratchViT (the quickstart with RoPE) trained on the synthetic shapes.

    Grad-CAM's score varies between training runs (76-99% over ten quickstart runs, docs/results.md, Explanations); with
    these test settings and seed the learned-table quickstart model is one of the weak ones (64.5%), the RoPE one
    is not (97.5%; commands in docs/results.md), so the test trains RoPE: the assertion is about the method, not about
    a lucky seed. (The CIFAR ResNet's known-answer test is in test_resnet_cifar.py, so that the two trainings can
    run on different pytest-xdist workers.)"""
    root = tmp_path_factory.mktemp("trained")
    overrides = {"data.max_train_samples": None, "data.max_eval_samples": None, "train.epochs": 6,
                 "model.config.position_embedding": "rope"}
    # A process of its own on one thread: the same model under `make test` (xdist), plain pytest, and whatever
    # tests ran before in this process (in-process training picked up their state: another model, other scores)
    subprocess.run([sys.executable, str(REPO / "scripts" / "finetune.py"), str(REPO / "recipes" / "quickstart.yaml"),
                    *tiny_recipe_overrides(root, **overrides)], cwd=REPO, check=True, capture_output=True, timeout=900,
                   env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    return AutoModelForImageClassification.from_pretrained(root / "best").eval()


def known_answer(model, method):
    result = synthetic_localization(model, NORM, method, count=200)
    return result["peak_in_box"], result["accuracy"]


@pytest.mark.slow
def test_vit_explanations_find_the_shape(trained_vit):
    gradcam, accuracy = known_answer(trained_vit, "gradcam")
    assert accuracy > 0.9 and gradcam >= 0.8
    rollout, _ = known_answer(trained_vit, "rollout")
    assert rollout >= 0.8
    for method in ("scorecam", "occlusion"):  # the perturbation methods, on the same known answer
        found, _ = known_answer(trained_vit, method)
        assert found >= 0.8, (method, found)


@pytest.mark.slow
def test_explain_and_pca_scripts_write_readable_pngs(trained_vit, tmp_path, capsys):
    """The trained ViT (the localization check needs one); an untrained narrow ResNet as the second model."""
    vit_dir, res_dir = tmp_path / "vit", tmp_path / "res"
    trained_vit.save_pretrained(vit_dir)
    torch.manual_seed(0)
    ResNetCifarForImageClassification(ResNetCifarConfig(
        stage_widths=[8, 16, 32, 64], id2label=trained_vit.config.id2label)).save_pretrained(res_dir)
    from transformers import ViTImageProcessor
    for d in (vit_dir, res_dir):
        ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(d)
    image = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([make_images(1, seed=5)[0][0], np.full((32, 32), 255, np.uint8)]), "RGBA").save(image)
    script = subprocess.run([sys.executable, "-m", "hfvision", "explain", "--model", str(vit_dir), "--image",
                             str(image), "--out", str(tmp_path / "one.png")], capture_output=True, text=True, cwd=REPO,
                            timeout=300)
    assert script.returncode == 0, script.stderr[-2000:]
    commands = [
        ["explain", "--model", vit_dir, "--model", res_dir, "--data", "synthetic", "--per-class", "--out",
         tmp_path / "grid.png"],
        ["explain", "--model", vit_dir, "--data", "synthetic", "--method", "rollout", "--count", 4, "--out",
         tmp_path / "rollout.png"],
        ["pca", "--model", vit_dir, "--model", res_dir, "--data", "synthetic", "--max-samples", 300, "--out",
         tmp_path / "pca.png"],
    ]
    for command in commands:
        status, _, err = run_cli_in_process(capsys, *command)
        assert status == 0, err[-2000:]
    reports = {}
    for flag in ([], ["--plain-norm-gradients"]):
        status, out, err = run_cli_in_process(capsys, "localization", "--model", vit_dir, "--count", 60, *flag)
        assert status == 0, err[-2000:]
        report = json.loads(out.strip().splitlines()[-1])
        reports[report["norm_rule"]] = report
    assert reports[True]["images"] == 60 and reports[True]["peak_in_box"] >= 0.8
    assert 0 <= reports[False]["peak_in_box"] <= 1
    for name in ("one.png", "grid.png", "rollout.png", "pca.png"):
        with Image.open(tmp_path / name) as png:
            assert png.size[0] > 300 and png.size[1] > 200
            assert np.asarray(png.convert("L")).std() > 10  # not a blank canvas
    status, _, err = run_cli_in_process(capsys, "explain", "--model", vit_dir, "--image", REPO / "README.md", "--out",
                                    tmp_path / "x.png")
    assert status == 2 and err.strip().splitlines()[-1].startswith("error: --image:")


def test_pca_and_per_class_helpers(tmp_path):
    from hfvision.data.sources import ImageSplit

    images, labels, _ = make_images(60)
    split = ImageSplit(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels))
    assert [int(split.labels[i]) for i in first_index_per_class(split.labels, 6)] == list(range(6))
    models = family_models()
    variances = pca_figure({"vit": (models["scratch_vit"], NORM), "resnet": (models["resnet18_cifar"], NORM)},
                           split, list(CLASSES), tmp_path / "pca.png")
    assert set(variances) == {"vit", "resnet"} and all(0 < sum(v) <= 1 for v in variances.values())
    assert (tmp_path / "pca.png").stat().st_size > 10_000


@pytest.mark.parametrize("size", [32, 16])
def test_heatmaps_explain_the_images_as_training_feeds_them(size):
    """The pixels are the images resized (torchvision) and normalised by hand; the maps are Grad-CAM's on them."""
    from torchvision.transforms.v2 import functional as TF

    spec = InputSpec(size, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    resized = TF.resize(images.float() / 255, [size, size], antialias=True)
    expected = (resized - torch.tensor(spec.mean)[:, None, None]) / torch.tensor(spec.std)[:, None, None]
    torch.manual_seed(0)
    model = ScratchViTForImageClassification(ScratchViTConfig(image_size=size, patch_size=4, hidden_size=32,
                                                              num_hidden_layers=2, num_attention_heads=2, num_labels=4))
    heat, classes, pixels = heatmaps(model, spec, images)
    torch.testing.assert_close(pixels, expected, rtol=1e-5, atol=1e-5)
    reference_heat, reference_classes = GradCam(model)(expected)
    np.testing.assert_allclose(heat, reference_heat.numpy(), rtol=1e-4, atol=1e-5)
    assert classes.tolist() == reference_classes.tolist() == model(pixel_values=expected).logits.argmax(1).tolist()
