"""LoRA through peft: what trains, what is saved, and that the saved dirs load where hfvision and peft do not."""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, tiny_recipe_overrides
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification

import hfvision.training.trainer as run_module
from hfvision import ScratchViTConfig, ScratchViTForImageClassification
from hfvision.errors import HfvisionError, RecipeError
from hfvision.models.factory import build_model, resolve_input_spec
from hfvision.models.lora import merged_copy, plain_model
from hfvision.spec import InputSpec
from hfvision.recipe import DataRecipe, LoraRecipe, ModelRecipe, TrainRecipe, load_recipe
from hfvision.training.optim import build_optimizer
from hfvision.pipeline import fit

LABELS = ["a", "b", "c"]


@pytest.fixture(scope="module")
def lora_sources(tmp_path_factory, tiny_pretrained_dirs):
    """Saved tiny checkpoints of every family with a LoRA table: transformers ViT and Swin, ScratchViT, timm ViT."""
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification, ViTImageProcessor

    root = tmp_path_factory.mktemp("lora_sources")
    torch.manual_seed(0)
    scratch = ScratchViTForImageClassification(ScratchViTConfig(hidden_size=32, num_hidden_layers=2,
                                                                num_attention_heads=2, num_labels=10))
    scratch.save_pretrained(root / "scratch_vit")
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3,
                      image_std=[0.5] * 3).save_pretrained(root / "scratch_vit")
    timm = TimmWrapperForImageClassification(TimmWrapperConfig(
        architecture="vit_tiny_patch16_224", num_labels=10,
        model_args={"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
        pretrained_cfg={"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 1.0}))
    timm.save_pretrained(root / "timm")
    return {"vit": tiny_pretrained_dirs["vit"], "swin": tiny_pretrained_dirs["swin"],
            "scratch_vit": root / "scratch_vit", "timm": root / "timm"}


# The modules that get adapters, by family (the defaults in hfvision/models/families.py), and the head.
EXPECTED_TARGETS = {
    "vit": ({f"vit.layers.{i}.attention.{p}" for i in (0, 1) for p in ("q_proj", "v_proj")}, "classifier"),
    "swin": ({f"swin.encoder.layers.{s}.blocks.0.attention.{p}" for s in (0, 1) for p in ("q_proj", "v_proj")},
             "classifier"),
    "scratch_vit": ({f"vit.blocks.{i}.attn.{p}" for i in (0, 1) for p in ("qkv", "proj")}, "classifier"),
    "timm": ({f"timm_model.blocks.{i}.attn.qkv" for i in (0, 1)}, "timm_model.head"),
}


def lora_model(source, **lora):
    torch.manual_seed(0)
    recipe = ModelRecipe(name=str(source), tuning="lora", lora=LoraRecipe(**lora))
    return build_model(recipe, resolve_input_spec(recipe, DataRecipe()), LABELS).model


def train_steps(model, steps=3, lr=0.05):
    optimizer = build_optimizer(model, TrainRecipe(learning_rate=lr, weight_decay=0.1))
    generator = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(steps):
        pixels = torch.randn(4, 3, 32, 32, generator=generator)
        loss = F.cross_entropy(model(pixel_values=pixels).logits, torch.tensor([0, 1, 2, 0]))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize("family", list(EXPECTED_TARGETS))
def test_lora_trains_only_the_adapters_and_the_classifier(lora_sources, family):
    model = lora_model(lora_sources[family])
    base = plain_model(model)
    before = copy.deepcopy(base.state_dict())
    targets, head = EXPECTED_TARGETS[family]
    adapted = {name for name, m in base.named_modules() if hasattr(m, "lora_A")}
    assert adapted == targets
    trainable = {name for name, p in base.named_parameters() if p.requires_grad}
    assert trainable == ({f"{t}.lora_{ab}.default.weight" for t in targets for ab in "AB"}
                         | {f"{head}.modules_to_save.default.{w}" for w in ("weight", "bias")})

    train_steps(model)
    after = base.state_dict()
    for name, tensor in after.items():
        if "lora_" in name or ".modules_to_save." in name:
            assert not torch.equal(tensor, before[name]), f"{name} did not train"
        else:  # frozen: the pretrained tensor (and the original head), bit for bit
            assert torch.equal(tensor, before[name]), f"{name} changed"


@pytest.mark.parametrize("family", ["vit", "scratch_vit"])
def test_merged_copy_gives_the_unmerged_logits_and_leaves_the_model_alone(lora_sources, family):
    model = lora_model(lora_sources[family])
    train_steps(model)
    model.eval()
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        unmerged = model(pixel_values=pixels).logits
        merged = merged_copy(model)
        assert type(merged) is type(plain_model(model)) and not any("lora" in n for n, _ in merged.named_parameters())
        torch.testing.assert_close(merged(pixel_values=pixels).logits, unmerged, rtol=1e-5, atol=1e-5)
        assert torch.equal(model(pixel_values=pixels).logits, unmerged)  # adapters still separate and active
    assert any(hasattr(m, "lora_A") for m in model.modules())


def test_lora_parameter_count_by_hand(lora_sources):
    """r * (in + out) per adapted projection, plus the new head: ViT width 32, 2 layers, q and v, 3 labels."""
    model = lora_model(lora_sources["vit"], r=4)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 2 * 2 * 4 * (32 + 32) + (32 * 3 + 3)


def test_lora_bad_settings_are_one_line_errors(lora_sources):
    with pytest.raises(HfvisionError, match=r"model.lora.target_modules: \['nope'\] do not name modules"):
        lora_model(lora_sources["vit"], target_modules=["nope"])
    with pytest.raises(HfvisionError, match="model.lora.target_modules: no default for model type 'resnet_cifar'"):
        build_model(ModelRecipe(name="resnet18_cifar", tuning="lora"), InputSpec(32, (0.5,) * 3, (0.5,) * 3), LABELS)
    with pytest.raises(RecipeError, match="model.lora: only used with model.tuning: lora"):
        load_recipe(None, ["model.lora.r=4"])
    with pytest.raises(RecipeError, match="model.lora.dropout"):
        load_recipe(None, ["model.tuning=lora", "model.lora.dropout=1.5"])


# ----------------------------------------------------------------------------------------------
# End to end: fit with LoRA


def lora_overrides(out, source, **extra):
    return tiny_recipe_overrides(out, **{"model.name": str(source), "model.tuning": "lora", "model.lora.r": 4,
                                         "train.learning_rate": 5e-3, "train.allow_unusual_lr": True, **extra})


@pytest.fixture(scope="module", params=["vit", "scratch_vit"])
def lora_run(request, tmp_path_factory, lora_sources):
    family = request.param
    out = tmp_path_factory.mktemp(f"lora_{family}") / "run"
    metrics = fit(load_recipe(None, lora_overrides(out, lora_sources[family], **{
        "data.classes": ["yellow_cross", 0, "blue_triangle"], "train.epochs": 2, "eval.explain": True})))
    return family, lora_sources[family], out, metrics


@pytest.mark.slow
def test_lora_best_is_merged_pretrained_weights_except_the_adapted_ones(lora_run):
    family, source, out, metrics = lora_run
    before, best = load_file(source / "model.safetensors"), load_file(out / "best" / "model.safetensors")
    assert set(best) == set(before)  # a plain model: no adapter or peft wrapper names
    # transformers 5 writes ViT's 4.x names to disk (attention.attention.query for q_proj)
    adapted = ("attention.query", "attention.value") if family == "vit" else ("attn.qkv", "attn.proj")
    for name, tensor in before.items():
        if name.startswith("classifier"):
            assert best[name].shape[0] == 3
        elif any(f"{a}.weight" in name for a in adapted):
            assert not torch.equal(best[name], tensor), name  # W + (alpha / r) B A
        else:
            assert torch.equal(best[name], tensor), name
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["id2label"] == {"0": "yellow_cross", "1": "red_square", "2": "blue_triangle"}
    assert list(metrics["test"]["per_class"]) == ["yellow_cross", "red_square", "blue_triangle"]
    assert (out / "gradcam_per_class.png").stat().st_size > 10_000  # Grad-CAM on the merged model


@pytest.mark.slow
def test_lora_parameters_in_metrics_card_and_report(lora_run):
    family, _, out, metrics = lora_run
    per_layer = 4 * (32 + 32) * 2 if family == "vit" else 4 * (32 + 96) + 4 * (32 + 32)  # q, v | qkv, proj
    trainable = 2 * per_layer + 32 * 3 + 3
    saved = json.loads((out / "metrics.json").read_text())["model"]
    assert saved["trainable_parameters"] == trainable == metrics["model"]["trainable_parameters"]
    assert saved["trainable_share"] == pytest.approx(trainable / saved["parameters"])
    share = f"{trainable:,} ({100 * trainable / saved['parameters']:.2f}%)"
    assert f"| trainable parameters (lora tuning) | {share} |" in (out / "best" / "README.md").read_text()
    assert f"| trainable parameters | {share.removesuffix(')')} of the saved model's) |" in (out / "report.md").read_text()
    assert "adapter/" in (out / "best" / "README.md").read_text()


@pytest.mark.slow
def test_lora_adapter_reloads_with_peft_and_matches_best(lora_run):
    _, source, out, _ = lora_run
    best = AutoModelForImageClassification.from_pretrained(out / "best").eval()
    base = AutoModelForImageClassification.from_pretrained(source, num_labels=3, id2label=best.config.id2label,
                                                           label2id=best.config.label2id, ignore_mismatched_sizes=True)
    reloaded = PeftModel.from_pretrained(base, out / "best" / "adapter").eval()
    pixels = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=pixels).logits, best(pixel_values=pixels).logits,
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_lora_best_loads_in_a_fresh_process_without_hfvision_or_peft(lora_run, tmp_path):
    from PIL import Image

    from hfvision.data.synthetic import make_images

    family, _, out, _ = lora_run
    best = out / "best"
    image = tmp_path / "shape.png"
    Image.fromarray(make_images(1, seed=3)[0][0]).save(image)
    model = AutoModelForImageClassification.from_pretrained(best).eval()
    pixels = torch.randn(2, 3, 32, 32)
    torch.save(pixels, tmp_path / "pixels.pt")
    torch.save(model(pixel_values=pixels).logits.detach(), tmp_path / "logits.pt")
    trust = ", trust_remote_code=True" if family == "scratch_vit" else ""  # custom code ships via auto_map
    code = f"""
import sys, torch
sys.modules['hfvision'] = None
sys.modules['peft'] = None
from transformers import AutoModelForImageClassification, pipeline
model = AutoModelForImageClassification.from_pretrained({str(best)!r}{trust}).eval()
torch.testing.assert_close(model(pixel_values=torch.load({str(tmp_path / 'pixels.pt')!r})).logits,
                           torch.load({str(tmp_path / 'logits.pt')!r}), rtol=0, atol=0)
print(sorted(p["label"] for p in pipeline("image-classification", model={str(best)!r}{trust})({str(image)!r})))
"""
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == str(sorted(["yellow_cross", "red_square", "blue_triangle"]))


@pytest.mark.slow
def test_lora_run_with_ema_resumes_exactly(tmp_path, monkeypatch, lora_sources):
    settings = {"train.epochs": 2, "train.ema_decay": 0.9}
    source = lora_sources["scratch_vit"]

    def run(name, **extra):
        return fit(load_recipe(None, lora_overrides(tmp_path / name, source, **settings, **extra)))

    straight = run("straight")
    original = run_module.train_one_epoch

    def crash_in_second_epoch(parts, epoch, *args):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(parts, epoch, *args)

    monkeypatch.setattr(run_module, "train_one_epoch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run("resumed")
    monkeypatch.setattr(run_module, "train_one_epoch", original)
    resumed = run("resumed", **{"train.resume": True})
    for part in ("model.safetensors", "adapter/adapter_model.safetensors"):
        reference = load_file(tmp_path / "straight" / "last" / part)
        assert reference and load_file(tmp_path / "resumed" / "last" / part).keys() == reference.keys()
        for name, tensor in load_file(tmp_path / "resumed" / "last" / part).items():
            assert torch.equal(tensor, reference[name]), name
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in straight["history"]]


@pytest.mark.slow
def test_lora_under_two_processes(tmp_path, lora_sources):
    """torchrun on two CPU processes (gloo): one merged best/ with its adapter, the whole test split evaluated."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train:\n  report_to: none\n")
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "scripts" / "finetune.py"), str(recipe),
               *lora_overrides(out, lora_sources["scratch_vit"], **{"data.max_eval_samples": 101})]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600, check=False,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["num_samples"] == 101  # the odd tail counted once
    assert (out / "best" / "adapter" / "adapter_config.json").is_file()
    assert not any("lora" in k for k in load_file(out / "best" / "model.safetensors"))
