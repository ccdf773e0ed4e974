"""One factory from ``model.name`` to a classifier, its image processor and the input normalisation.

``model.name`` is a built-in family (``scratch_vit``, ``scratch_swin``, ``resnet18_cifar``), a local
model dir, a run dir (its ``best/`` is used), or a Hub id of any ``AutoModelForImageClassification``
checkpoint (ViT, Swin, ResNet, ``timm/...`` through transformers' timm wrapper). Pretrained heads are
replaced for the dataset's labels.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from pathlib import Path

from torch import nn
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    PretrainedConfig,
    PreTrainedModel,
    SwinConfig,
    SwinForImageClassification,
    TimmWrapperImageProcessor,
    ViTImageProcessor,
)

import hfvision  # noqa: F401  (registers the scratch families with the Auto classes)
from hfvision.errors import HfvisionError
from hfvision.models.resnet_cifar import ResNetCifarConfig, ResNetCifarForImageClassification
from hfvision.models.scratch_vit import ScratchViTConfig, ScratchViTForImageClassification
from hfvision.models.tuning import apply_tuning, find_classifier
from hfvision.normalization import Normalization
from hfvision.recipe import DataRecipe, ModelRecipe

# Swin-T widths for 32x32 images: patch 2 and window 4 give a 16x16 -> 8x8 -> 4x4 token pyramid.
SCRATCH_SWIN_DEFAULTS = dict(image_size=32, patch_size=2, window_size=4, embed_dim=96, depths=[2, 6, 2],
                             num_heads=[3, 6, 12], drop_path_rate=0.1)
SCRATCH_FAMILIES = {
    "scratch_vit": (ScratchViTConfig, ScratchViTForImageClassification, {}),
    "scratch_swin": (SwinConfig, SwinForImageClassification, SCRATCH_SWIN_DEFAULTS),
    "resnet18_cifar": (ResNetCifarConfig, ResNetCifarForImageClassification, {}),
}
# Scratch models normalise with these unless the recipe says otherwise (data.mean / data.std).
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)


@dataclass
class BuiltModel:
    model: PreTrainedModel
    image_processor: object
    normalization: Normalization


def resolve_model_path(name: str) -> str:
    """A run dir means its ``best/`` model; a model dir or Hub id is returned as is."""
    path = Path(name).expanduser()
    if (path / "best" / "config.json").is_file():
        return str(path / "best")
    if path.exists() and not (path / "config.json").is_file():
        raise HfvisionError(f"model.name: {name} is neither a model dir (config.json) nor a run dir (best/)")
    if name.startswith(("/", "./", "../", "~")) and not path.exists():
        raise HfvisionError(f"model.name: directory {name} does not exist")
    return str(path) if path.exists() else name


def _check_config_keys(config_class, overrides: dict, family: str) -> None:
    """PretrainedConfig accepts any keyword silently; reject typos before they are lost."""
    accepted = set(inspect.signature(config_class.__init__).parameters) - {"self", "kwargs"}
    accepted |= set(inspect.signature(PretrainedConfig.__init__).parameters) - {"self", "kwargs"}
    for key in overrides:
        if key not in accepted:
            hint = difflib.get_close_matches(key, sorted(accepted), n=1)
            tail = f" (did you mean 'model.config.{hint[0]}'?)" if hint else ""
            raise HfvisionError(f"unknown key 'model.config.{key}' for {family}{tail}")


def _normalization(size: int, mean, std) -> Normalization:
    return Normalization(size=int(size), mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std))


def _edge(size) -> int | None:
    """The square edge from an int, a dict or transformers' ``SizeDict``."""
    if size is None or isinstance(size, int):
        return size
    get = size.get if hasattr(size, "get") else lambda key: getattr(size, key, None)
    return get("height") or get("shortest_edge")


def processor_normalization(processor) -> Normalization:
    """Size, mean and std from an image processor (square inputs; the crop size when it center-crops)."""
    if hasattr(processor, "data_config"):  # transformers' timm wrapper keeps timm's data config
        config = processor.data_config
        return _normalization(config["input_size"][-1], config["mean"], config["std"])
    size = _edge(processor.size)
    if getattr(processor, "do_center_crop", False) and _edge(getattr(processor, "crop_size", None)):
        size = _edge(processor.crop_size)
    return _normalization(size, processor.image_mean, processor.image_std)


def _scratch_model(model_recipe: ModelRecipe, data: DataRecipe, label_names: list[str]) -> BuiltModel:
    config_class, model_class, defaults = SCRATCH_FAMILIES[model_recipe.name]
    _check_config_keys(config_class, model_recipe.config, model_recipe.name)
    fields = {**defaults, **model_recipe.config}
    if data.image_size is not None:
        fields["image_size"] = data.image_size
    try:
        config = config_class(**fields, num_labels=len(label_names), id2label=dict(enumerate(label_names)),
                              label2id={name: i for i, name in enumerate(label_names)})
    except (ValueError, TypeError) as exc:
        raise HfvisionError(f"model.config: {exc}") from None
    model = model_class(config)
    size = getattr(config, "image_size", 32)
    norm = _normalization(size, data.mean or DEFAULT_MEAN, data.std or DEFAULT_STD)
    processor = ViTImageProcessor(size={"height": norm.size, "width": norm.size}, image_mean=list(norm.mean),
                                  image_std=list(norm.std), resample=3)
    return BuiltModel(model, processor, norm)


def _pretrained_model(model_recipe: ModelRecipe, data: DataRecipe, label_names: list[str]) -> BuiltModel:
    path = resolve_model_path(model_recipe.name)
    try:
        config = AutoConfig.from_pretrained(path)
        saved_labels = dict(config.id2label)
        for key, value in model_recipe.config.items():
            if not hasattr(config, key):
                raise HfvisionError(f"unknown key 'model.config.{key}' for {config.model_type} checkpoints")
            setattr(config, key, value)
        config.num_labels = len(label_names)
        config.id2label = dict(enumerate(label_names))
        config.label2id = {name: i for i, name in enumerate(label_names)}
        model = _from_pretrained(path, config)
        if saved_labels != config.id2label:  # other classes: a new head, even where the shapes match
            _reset_classifier(model)
        processor = AutoImageProcessor.from_pretrained(path)
    except HfvisionError:
        raise
    except OSError as exc:
        first = str(exc).strip().splitlines()[0]
        raise HfvisionError(f"model.name: could not load '{model_recipe.name}': {first}") from None
    norm = processor_normalization(processor)
    norm = _normalization(data.image_size or norm.size, data.mean or norm.mean, data.std or norm.std)
    processor = _set_processor_normalization(processor, norm, model)
    return BuiltModel(model, processor, norm)


def _reset_classifier(model: PreTrainedModel) -> None:
    """Fresh weights for the head's linear layers (``from_pretrained`` re-initialises a head only on a shape
    mismatch, so 5 new classes after 5 old ones would inherit the old head)."""
    for module in find_classifier(model).modules():
        if isinstance(module, nn.Linear):
            module.reset_parameters()


def _from_pretrained(path: str, config) -> PreTrainedModel:
    kwargs = dict(config=config, ignore_mismatched_sizes=True)
    try:
        return AutoModelForImageClassification.from_pretrained(path, attn_implementation="sdpa", **kwargs)
    except ValueError as exc:  # architectures without an SDPA path
        if "sdpa" not in str(exc).lower() and "scaled_dot_product_attention" not in str(exc):
            raise
        return AutoModelForImageClassification.from_pretrained(path, **kwargs)


def _set_processor_normalization(processor, norm: Normalization, model: PreTrainedModel):
    """Make the saved processor describe what training fed the model, so inference matches."""
    if hasattr(processor, "data_config"):  # timm: the processor is read from the model config's pretrained_cfg
        pretrained_cfg = {**(model.config.pretrained_cfg or {}), "input_size": [3, norm.size, norm.size],
                          "mean": list(norm.mean), "std": list(norm.std), "crop_pct": 1.0}
        model.config.pretrained_cfg = pretrained_cfg
        return TimmWrapperImageProcessor(pretrained_cfg=pretrained_cfg, architecture=model.config.architecture)
    processor.image_mean, processor.image_std = list(norm.mean), list(norm.std)
    processor.size = {"height": norm.size, "width": norm.size}
    if getattr(processor, "do_center_crop", False):
        processor.crop_size = {"height": norm.size, "width": norm.size}
    return processor


def build_model(model_recipe: ModelRecipe, data: DataRecipe, label_names: list[str]) -> BuiltModel:
    """The classifier for ``label_names`` with the recipe's tuning strategy applied."""
    if model_recipe.name in SCRATCH_FAMILIES:
        built = _scratch_model(model_recipe, data, label_names)
    else:
        built = _pretrained_model(model_recipe, data, label_names)
    built.model = apply_tuning(built.model, model_recipe.tuning, model_recipe.lora)
    return built


def load_model_for_inference(name: str, device="cpu") -> BuiltModel:
    """A saved model dir, run dir or Hub id with its processor, in eval mode."""
    path = resolve_model_path(name)
    try:
        model = AutoModelForImageClassification.from_pretrained(path).to(device).eval()
        processor = AutoImageProcessor.from_pretrained(path)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0]
        raise HfvisionError(f"--model: could not load '{name}': {first}") from None
    return BuiltModel(model, processor, processor_normalization(processor))
