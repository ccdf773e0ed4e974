"""One factory from ``model.name`` to a classifier and its image processor, and the run's :class:`InputSpec`.

``model.name`` is a built-in family (``scratch_vit``, ``scratch_swin``, ``resnet18_cifar``), a local
model dir, a run dir (its ``best/`` is used), or a Hub id of any ``AutoModelForImageClassification``
checkpoint (ViT, Swin, ResNet, ``timm/...`` through transformers' timm wrapper). Pretrained heads are
replaced for the dataset's labels.
"""

from __future__ import annotations

import difflib
import inspect
import pickle
from dataclasses import dataclass
from pathlib import Path

from torch import nn
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    PretrainedConfig,
    PreTrainedModel,
    TimmWrapperImageProcessor,
    ViTImageProcessor,
)

import hfvision  # noqa: F401  (registers the scratch families with the Auto classes)
from hfvision.errors import HfvisionError, RecipeError
from hfvision.models.families import BUILT_IN, BUILT_IN_MEAN, BUILT_IN_STD
from hfvision.models.tuning import apply_tuning, find_classifier
from hfvision.recipe import DataRecipe, ModelRecipe
from hfvision.spec import InputSpec, input_spec


@dataclass
class BuiltModel:
    model: PreTrainedModel
    image_processor: object
    spec: InputSpec


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


def _edge(size) -> int | None:
    """The square edge from an int, a dict or transformers' ``SizeDict``."""
    if size is None or isinstance(size, int):
        return size
    get = size.get if hasattr(size, "get") else lambda key: getattr(size, key, None)
    return get("height") or get("shortest_edge")


def processor_spec(processor) -> InputSpec:
    """Size, mean and std from an image processor (square inputs; the crop size when it center-crops)."""
    if hasattr(processor, "data_config"):  # transformers' timm wrapper keeps timm's data config
        config = processor.data_config
        return input_spec(config["input_size"][-1], config["mean"], config["std"])
    size = _edge(processor.size)
    if getattr(processor, "do_center_crop", False) and _edge(getattr(processor, "crop_size", None)):
        size = _edge(processor.crop_size)
    return input_spec(size, processor.image_mean, processor.image_std)


def _built_in_image_size(model_recipe: ModelRecipe, data: DataRecipe) -> int:
    family = BUILT_IN[model_recipe.name]
    configured = model_recipe.config.get("image_size", family.defaults.get("image_size"))
    if data.image_size is not None and configured is not None and data.image_size != configured:
        raise RecipeError(f"data.image_size: {data.image_size} differs from model.config.image_size {configured}; "
                          f"for {model_recipe.name} they are the same thing, set one")
    return data.image_size or configured or family.config_class().image_size


def resolve_input_spec(model_recipe: ModelRecipe, data: DataRecipe) -> InputSpec:
    """The run's input size, mean and std, by the precedence in ``hfvision.spec`` (a pretrained checkpoint's
    image processor is read here; its weights are not)."""
    if model_recipe.name in BUILT_IN:
        spec = input_spec(_built_in_image_size(model_recipe, data), data.mean or BUILT_IN_MEAN, data.std or BUILT_IN_STD)
    else:
        path = resolve_model_path(model_recipe.name)
        try:
            processor = AutoImageProcessor.from_pretrained(path, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise checkpoint_load_error("model.name", f"the image processor of '{model_recipe.name}'", exc) from None
        saved = processor_spec(processor)
        spec = input_spec(data.image_size or saved.image_size, data.mean or saved.mean, data.std or saved.std)
    padding = data.augment.random_crop_padding
    if padding >= spec.image_size:  # a crop of padding alone; a huge value would allocate terabytes
        raise HfvisionError(f"data.augment.random_crop_padding: expected less than the input size "
                            f"({spec.image_size}), got {padding}")
    return spec


def checkpoint_load_error(key: str, what: str, exc: Exception) -> HfvisionError:
    """One line for a checkpoint that cannot be loaded, saying plainly when it was refused for safety."""
    text = str(exc).strip()
    if "trust_remote_code" in text:
        reason = ("it ships its own modelling code, which hfvision never runs (trust_remote_code is off); use a "
                  "checkpoint of an architecture that transformers or hfvision provides")
    elif isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in text:
        reason = ("its weights are a pickle that torch.load(weights_only=True) refuses, because loading it would "
                  "run code; use a safetensors copy from a source you trust")
    else:
        reason = text.splitlines()[0][:300] if text else type(exc).__name__
    return HfvisionError(f"{key}: could not load {what}: {reason}")


def _label_maps(label_names: list[str]) -> dict:
    return dict(num_labels=len(label_names), id2label=dict(enumerate(label_names)),
                label2id={name: i for i, name in enumerate(label_names)})


def _built_in_model(model_recipe: ModelRecipe, spec: InputSpec, label_names: list[str]) -> BuiltModel:
    family = BUILT_IN[model_recipe.name]
    _check_config_keys(family.config_class, model_recipe.config, model_recipe.name)
    fields = {**family.defaults, **model_recipe.config, "image_size": spec.image_size}
    try:
        config = family.config_class(**fields, **_label_maps(label_names))
    except (ValueError, TypeError) as exc:
        raise HfvisionError(f"model.config: {exc}") from None
    processor = ViTImageProcessor(size={"height": spec.image_size, "width": spec.image_size},
                                  image_mean=list(spec.mean), image_std=list(spec.std), resample=3)
    return BuiltModel(family.model_class(config), processor, spec)


def _pretrained_model(model_recipe: ModelRecipe, spec: InputSpec, label_names: list[str]) -> BuiltModel:
    path = resolve_model_path(model_recipe.name)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        saved_labels = dict(config.id2label)
        for key, value in model_recipe.config.items():
            if not hasattr(config, key):
                raise HfvisionError(f"unknown key 'model.config.{key}' for {config.model_type} checkpoints")
            setattr(config, key, value)
        for key, value in _label_maps(label_names).items():
            setattr(config, key, value)
        model = _from_pretrained(path, config)
        if saved_labels != config.id2label:  # other classes: a new head, even where the shapes match
            _reset_classifier(model)
        processor = AutoImageProcessor.from_pretrained(path, trust_remote_code=False)
    except HfvisionError:
        raise
    except (OSError, ValueError, pickle.UnpicklingError) as exc:
        raise checkpoint_load_error("model.name", f"'{model_recipe.name}'", exc) from None
    return BuiltModel(model, _describe_input(processor, spec, model), spec)


def _reset_classifier(model: PreTrainedModel) -> None:
    """Fresh weights for the head's linear layers (``from_pretrained`` re-initialises a head only on a shape
    mismatch, so 5 new classes after 5 old ones would inherit the old head)."""
    for module in find_classifier(model).modules():
        if isinstance(module, nn.Linear):
            module.reset_parameters()


def _from_pretrained(path: str, config) -> PreTrainedModel:
    kwargs = dict(config=config, ignore_mismatched_sizes=True, trust_remote_code=False)
    try:
        return AutoModelForImageClassification.from_pretrained(path, attn_implementation="sdpa", **kwargs)
    except ValueError as exc:  # architectures without an SDPA path
        if "sdpa" not in str(exc).lower() and "scaled_dot_product_attention" not in str(exc):
            raise
        return AutoModelForImageClassification.from_pretrained(path, **kwargs)


def _describe_input(processor, spec: InputSpec, model: PreTrainedModel):
    """Make the saved processor describe what training fed the model, so inference matches."""
    if hasattr(processor, "data_config"):  # timm: the processor is read from the model config's pretrained_cfg
        pretrained_cfg = {**(model.config.pretrained_cfg or {}), "input_size": [3, spec.image_size, spec.image_size],
                          "mean": list(spec.mean), "std": list(spec.std), "crop_pct": 1.0}
        model.config.pretrained_cfg = pretrained_cfg
        return TimmWrapperImageProcessor(pretrained_cfg=pretrained_cfg, architecture=model.config.architecture)
    processor.image_mean, processor.image_std = list(spec.mean), list(spec.std)
    processor.size = {"height": spec.image_size, "width": spec.image_size}
    if getattr(processor, "do_center_crop", False):
        processor.crop_size = {"height": spec.image_size, "width": spec.image_size}
    return processor


def build_model(model_recipe: ModelRecipe, spec: InputSpec, label_names: list[str]) -> BuiltModel:
    """The classifier for ``label_names`` and inputs per ``spec``, with the recipe's tuning strategy applied."""
    if model_recipe.name in BUILT_IN:
        built = _built_in_model(model_recipe, spec, label_names)
    else:
        built = _pretrained_model(model_recipe, spec, label_names)
    built.model = apply_tuning(built.model, model_recipe.tuning, model_recipe.lora)
    return built


def load_model_for_inference(name: str, device="cpu") -> BuiltModel:
    """A saved model dir, run dir or Hub id with its processor, in eval mode."""
    path = resolve_model_path(name)
    try:
        model = AutoModelForImageClassification.from_pretrained(path, trust_remote_code=False).to(device).eval()
        processor = AutoImageProcessor.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError, pickle.UnpicklingError) as exc:
        raise checkpoint_load_error("--model", f"'{name}'", exc) from None
    return BuiltModel(model, processor, processor_spec(processor))
