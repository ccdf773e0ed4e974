"""Layer-wise learning-rate decay, the learning-rate guard rails and training on a subset of the classes."""

import logging

import numpy as np
import pytest
import torch
from conftest import tiny_recipe_overrides
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value

from hfvision import ScratchViTConfig, ScratchViTForImageClassification
from hfvision.data.sources import split_dataset
from hfvision.errors import HfvisionError, RecipeError
from hfvision.models.tuning import apply_tuning
from hfvision.recipe import DataRecipe, LoraRecipe, ModelRecipe, TrainRecipe, load_recipe
from hfvision.training.optim import (
    build_optimizer,
    build_scheduler,
    lr_multiplier,
    unusual_learning_rate,
    warn_unusual_learning_rate,
)

WD = 0.05


def lr_and_decay_by_name(model, optimizer) -> dict[str, tuple[float, float]]:
    """(learning rate, weight decay) of every trainable parameter, from the optimiser's groups."""
    group_of = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            assert id(param) not in group_of, "a parameter is in two groups"
            group_of[id(param)] = (group["lr"], group["weight_decay"])
    named = {name: group_of[id(p)] for name, p in model.named_parameters() if p.requires_grad}
    assert len(group_of) == len(named)
    return named


def vit():
    from transformers import ViTConfig, ViTForImageClassification

    return ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                               num_attention_heads=2, intermediate_size=64, num_labels=3))


def swin():
    from transformers import SwinConfig, SwinForImageClassification

    return SwinForImageClassification(SwinConfig(image_size=32, patch_size=2, window_size=4, embed_dim=16,
                                                 depths=[2, 1], num_heads=[1, 2], num_labels=3))


def scratch_vit():
    return ScratchViTForImageClassification(ScratchViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                             num_labels=3))


def timm_vit():
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    return TimmWrapperForImageClassification(TimmWrapperConfig(
        architecture="vit_tiny_patch16_224", num_labels=3,
        model_args={"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}))


# lr = 1.0 * 0.5 ** (L + 1 - depth): embeddings depth 0, block i depth i + 1, final norm and head L + 1.
# Swin numbers blocks across stages (depths [2, 1]: L = 3); its patch merging sits with its stage's last block.
# timm's own group_matcher puts the final norm with the last block (depth L), the head at L + 1.
LAYER_DECAY_TABLE = {
    "vit": (vit, {
        "vit.embeddings.cls_token": (0.125, WD),
        "vit.embeddings.patch_embeddings.projection.weight": (0.125, WD),
        "vit.embeddings.patch_embeddings.projection.bias": (0.125, 0.0),
        "vit.layers.0.attention.q_proj.weight": (0.25, WD),
        "vit.layers.0.mlp.fc2.bias": (0.25, 0.0),
        "vit.layers.1.layernorm_before.weight": (0.5, 0.0),
        "vit.layers.1.attention.o_proj.weight": (0.5, WD),
        "vit.layernorm.weight": (1.0, 0.0),
        "classifier.weight": (1.0, WD),
        "classifier.bias": (1.0, 0.0),
    }),
    "swin": (swin, {
        "swin.embeddings.patch_embeddings.projection.weight": (0.0625, WD),
        "swin.embeddings.norm.weight": (0.0625, 0.0),
        "swin.encoder.layers.0.blocks.0.attention.q_proj.weight": (0.125, WD),
        "swin.encoder.layers.0.blocks.1.mlp.fc1.weight": (0.25, WD),
        "swin.encoder.layers.0.downsample.reduction.weight": (0.25, WD),
        "swin.encoder.layers.0.downsample.norm.bias": (0.25, 0.0),
        "swin.encoder.layers.1.blocks.0.attention.relative_position_bias.relative_position_bias_table": (0.5, WD),
        "swin.layernorm.weight": (1.0, 0.0),
        "classifier.weight": (1.0, WD),
    }),
    "scratch_vit": (scratch_vit, {  # no_weight_decay(): CLS and the position table do not decay
        "vit.cls_token": (0.125, 0.0),
        "vit.position_table": (0.125, 0.0),
        "vit.patch_embed.projection.weight": (0.125, WD),
        "vit.blocks.0.attn.qkv.weight": (0.25, WD),
        "vit.blocks.1.ffn.fc1.bias": (0.5, 0.0),
        "vit.norm.weight": (1.0, 0.0),
        "classifier.weight": (1.0, WD),
    }),
    "timm": (timm_vit, {
        "timm_model.cls_token": (0.125, WD),
        "timm_model.patch_embed.proj.weight": (0.125, WD),
        "timm_model.blocks.0.attn.qkv.weight": (0.25, WD),
        "timm_model.blocks.1.mlp.fc2.bias": (0.5, 0.0),
        "timm_model.norm.weight": (0.5, 0.0),
        "timm_model.head.weight": (1.0, WD),
    }),
}


@pytest.mark.parametrize("family", list(LAYER_DECAY_TABLE))
def test_layer_decay_learning_rates_by_depth(family):
    make, expected = LAYER_DECAY_TABLE[family]
    model = make()
    optimizer = build_optimizer(model, TrainRecipe(learning_rate=1.0, weight_decay=WD, layer_decay=0.5))
    got = lr_and_decay_by_name(model, optimizer)
    for name, lr_and_decay in expected.items():
        assert got[name] == pytest.approx(lr_and_decay), name
    assert optimizer.param_groups[0]["lr"] == 1.0  # the head's group first: logs and the progress bar show it
    without = lr_and_decay_by_name(model, build_optimizer(model, TrainRecipe(learning_rate=1.0, weight_decay=WD)))
    assert {lr for lr, _ in without.values()} == {1.0}
    assert {n: d for n, (_, d) in without.items()} == {n: d for n, (_, d) in got.items()}  # same decay split


def test_the_schedule_scales_each_layer_group_from_its_own_rate():
    model = vit()
    train = TrainRecipe(learning_rate=0.1, weight_decay=WD, layer_decay=0.5, epochs=2, warmup_epochs=1)
    optimizer = build_optimizer(model, train)
    scheduler = build_scheduler(optimizer, train, steps_per_epoch=4)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([g["initial_lr"] / 4 for g in optimizer.param_groups])
    initial = [group["initial_lr"] for group in optimizer.param_groups]
    for step in range(1, 7):
        optimizer.step()
        scheduler.step()
        factor = lr_multiplier(step, train=train, steps_per_epoch=4)
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([lr * factor for lr in initial])
    assert sorted(set(initial)) == pytest.approx([0.1 * 0.5 ** k for k in (3, 2, 1, 0)])


def test_layer_decay_under_lora_uses_the_plain_names():
    model = apply_tuning(scratch_vit(), "lora", LoraRecipe(r=2))
    optimizer = build_optimizer(model, TrainRecipe(learning_rate=1.0, weight_decay=WD, layer_decay=0.5))
    got = lr_and_decay_by_name(model.get_base_model(), optimizer)
    assert got == ({
        **{f"vit.blocks.{i}.attn.{m}.lora_{ab}.default.weight": (0.5 ** (2 - i), WD)
           for i in (0, 1) for m in ("qkv", "proj") for ab in "AB"},
        "classifier.modules_to_save.default.weight": (1.0, WD), "classifier.modules_to_save.default.bias": (1.0, 0.0)})


def test_layer_decay_on_a_family_without_a_depth_table_is_one_line():
    from hfvision.models.resnet_cifar import ResNetCifarConfig, ResNetCifarForImageClassification

    model = ResNetCifarForImageClassification(ResNetCifarConfig(num_labels=3))
    with pytest.raises(HfvisionError, match="train.layer_decay: no layer-depth table for model type 'resnet_cifar'"):
        build_optimizer(model, TrainRecipe(layer_decay=0.7))
    with pytest.raises(RecipeError, match=r"train.layer_decay: expected a number in \(0, 1\]"):
        load_recipe(None, ["train.layer_decay=1.5"])


# ----------------------------------------------------------------------------------------------
# Guard rails

PRETRAINED = "google/vit-base-patch16-224-in21k"
GUARD_RAILS = [  # model.name, model.tuning, learning rate, allow_unusual_lr -> the start of the advice, or None
    (PRETRAINED, "full", 1e-3, False, "train.learning_rate 0.001 is high for full fine-tuning"),
    (PRETRAINED, "full", 5e-3, False, "train.learning_rate 0.005 is high for full fine-tuning"),
    (PRETRAINED, "full", 9e-4, False, None),
    (PRETRAINED, "lora", 1e-3, False, "train.learning_rate 0.001 is high for LoRA"),
    (PRETRAINED, "lora", 5e-4, False, None),
    (PRETRAINED, "head_only", 1e-4, False, "train.learning_rate 0.0001 is low for training a new head"),
    (PRETRAINED, "head_only", 2e-5, False, "train.learning_rate 2e-05 is low for training a new head"),
    (PRETRAINED, "head_only", 2e-4, False, None),
    (PRETRAINED, "head_and_last_stage", 1e-2, False, None),
    ("runs/pretrain", "full", 1e-2, False, "train.learning_rate 0.01 is high for full fine-tuning"),  # a run dir
    ("scratch_vit", "full", 3e-3, False, None),  # from scratch: high rates are right
    ("scratch_swin", "head_only", 1e-5, False, None),
    (PRETRAINED, "full", 1e-3, True, None),
    (PRETRAINED, "lora", 1e-2, True, None),
    (PRETRAINED, "head_only", 2e-5, True, None),
]


@pytest.mark.parametrize("name, tuning, lr, allow, expected", GUARD_RAILS)
def test_guard_rails_fire_on_their_combination_only(name, tuning, lr, allow, expected):
    advice = unusual_learning_rate(ModelRecipe(name=name, tuning=tuning),
                                   TrainRecipe(learning_rate=lr, allow_unusual_lr=allow))
    if expected is None:
        assert advice is None
    else:
        assert advice.startswith(expected) and "usual range" in advice and "train.allow_unusual_lr" in advice


@pytest.mark.parametrize("layer_decay, warned", [(None, True), (0.95, True), (0.9, True), (0.75, False)])
def test_layer_decay_below_0_9_is_the_other_fix_for_a_high_full_fine_tuning_rate(layer_decay, warned):
    advice = unusual_learning_rate(ModelRecipe(name=PRETRAINED, tuning="full"),
                                   TrainRecipe(learning_rate=1e-3, layer_decay=layer_decay))
    assert (advice is not None) == warned


def test_guard_rail_is_one_warning_line(caplog):
    from accelerate import PartialState

    PartialState()
    with caplog.at_level(logging.WARNING, logger="hfvision"):
        warn_unusual_learning_rate(ModelRecipe(name=PRETRAINED, tuning="head_only"), TrainRecipe(learning_rate=2e-5))
        warn_unusual_learning_rate(ModelRecipe(name=PRETRAINED, tuning="head_only"), TrainRecipe(learning_rate=1e-2))
    assert len(caplog.records) == 1 and "\n" not in caplog.records[0].getMessage()
    assert caplog.records[0].getMessage().startswith("warning: train.learning_rate 2e-05 is low")


@pytest.mark.slow
def test_fit_warns_once_at_start(tmp_path, caplog, tiny_pretrained_dirs):
    from hfvision.pipeline import fit

    overrides = {"model.name": str(tiny_pretrained_dirs["vit"]), "model.tuning": "head_only",
                 "train.learning_rate": 2e-5, "data.max_train_samples": 64, "data.max_eval_samples": 32}
    with caplog.at_level(logging.WARNING, logger="hfvision"):
        fit(load_recipe(None, tiny_recipe_overrides(tmp_path / "warned", **overrides)))
    assert [r.getMessage()[:41] for r in caplog.records if r.name == "hfvision"] == [
        "warning: train.learning_rate 2e-05 is low"]


# ----------------------------------------------------------------------------------------------
# data.classes

NAMES = ["cat", "dog", "bird", "fish"]


def labelled_source() -> DatasetDict:
    """Four classes; each row carries its original class id in ``source`` to check the re-indexing against."""
    features = Features({"image": Image(), "label": ClassLabel(names=NAMES), "source": Value("int64")})
    splits = {}
    for split, count in (("train", 200), ("test", 80)):
        labels = [i % 4 for i in range(count)]
        images = [np.full((8, 8, 3), 40 * label, np.uint8) for label in labels]
        splits[split] = Dataset.from_dict({"image": images, "label": labels, "source": labels}, features=features)
    return DatasetDict(splits)


def test_data_classes_keeps_those_classes_reindexed_in_the_given_order():
    recipe = DataRecipe(classes=["fish", 1], val_fraction=0.2, image_column="image", label_column="label")
    splits, _, label_column, names = split_dataset(labelled_source(), recipe, seed=0)
    assert names == ["fish", "dog"]
    assert {name: len(ds) for name, ds in splits.items()} == {"train": 80, "validation": 20, "test": 40}
    for ds in splits.values():
        assert ds.features[label_column].names == ["fish", "dog"]
        assert [names[label] for label in ds["label"]] == [NAMES[source] for source in ds["source"]]
        assert sorted(set(ds["label"])) == [0, 1]


@pytest.mark.parametrize("classes, message", [
    (["cow", "dog"], "data.classes: 'cow' is not a class of the dataset; classes are cat, dog, bird, fish"),
    ([0, 4], r"data.classes: id 4 is out of range; the dataset has 4 classes \(0 to 3\)"),
    (["dog", 1], r"data.classes: \['dog', 1\] names a class twice"),
])
def test_data_classes_unknown_or_repeated_classes_are_one_line(classes, message):
    with pytest.raises(HfvisionError, match=message):
        split_dataset(labelled_source(), DataRecipe(classes=classes), seed=0)


@pytest.mark.parametrize("value", ["[1]", "[1, 1]", "[true, 2]", "[-1, 2]"])
def test_data_classes_recipe_values(value):
    with pytest.raises(RecipeError, match="data.classes"):
        load_recipe(None, [f"data.classes={value}"])
    assert load_recipe(None, ["data.classes=[dog, 3]"]).data.classes == ["dog", 3]


def test_a_checkpoint_with_other_classes_of_the_same_count_gets_a_new_head(tmp_path):
    """The transfer study's case: 5 new classes after 5 old ones; from_pretrained alone would keep the old head."""
    from transformers import ViTImageProcessor

    from hfvision.models.factory import build_model, resolve_input_spec

    old = ScratchViTForImageClassification(ScratchViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                            id2label={0: "cat", 1: "dog"}))
    old.save_pretrained(tmp_path)
    ViTImageProcessor().save_pretrained(tmp_path)
    for labels, same_head in ((["fish", "bird"], False), (["cat", "dog"], True)):
        new = build_model(ModelRecipe(name=str(tmp_path)), resolve_input_spec(ModelRecipe(name=str(tmp_path)), DataRecipe()), labels).model
        assert torch.equal(new.classifier.weight, old.classifier.weight) is same_head
        assert same_head or torch.count_nonzero(new.classifier.weight) == 0  # a new head starts at zero
        assert torch.equal(new.vit.blocks[0].attn.qkv.weight, old.vit.blocks[0].attn.qkv.weight)
