"""One factory from ``model.name`` to a classifier and its image processor, and the run's :class:`InputSpec`.

``model.name`` is a built-in family (``scratch_vit``, ``scratch_swin``, ``resnet18_cifar``), a local
model dir, a run dir (its ``best/`` is used), or a Hub id of any ``AutoModelForImageClassification``
checkpoint (ViT, Swin, ResNet, ``timm/...`` through transformers' timm wrapper). Pretrained heads are
replaced for the dataset's labels.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from timm.layers import resample_abs_pos_embed
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
from transformers.utils import logging as transformers_logging

from hfvision.errors import HfvisionError, RecipeError
from hfvision.models.families import BUILT_IN, BUILT_IN_MEAN, BUILT_IN_STD
from hfvision.models.module_tree import find_classifier
from hfvision.models.tuning import apply_tuning
from hfvision.recipe import DataRecipe, ModelRecipe
from hfvision.spec import InputSpec, input_spec


@dataclass
class BuiltModel:
    model: PreTrainedModel
    image_processor: object
    spec: InputSpec
    notes: list = field(default_factory=list)  # what building did to a checkpoint, one line each, for the log


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
        config = processor.data_config  # crop_mode "center": the central crop_pct of the shorter side; else squash
        crop_pct = config.get("crop_pct") if config.get("crop_mode", "center") == "center" else None
        return input_spec(config["input_size"][-1], config["mean"], config["std"], crop_pct)
    size, crop_pct = _edge(processor.size), None
    if getattr(processor, "do_center_crop", False) and _edge(getattr(processor, "crop_size", None)):
        # resize the shorter side to `size`, then crop `crop_size`: the central crop/size of the shorter side
        crop_pct = min(1.0, _edge(processor.crop_size) / size)
        size = _edge(processor.crop_size)
    elif getattr(processor, "crop_pct", None) and (size or 0) < 384:  # ConvNeXt: shorter side size/crop_pct, crop
        crop_pct = float(processor.crop_pct)
    return input_spec(size, processor.image_mean, processor.image_std, crop_pct)


def _built_in_image_size(model_recipe: ModelRecipe, data: DataRecipe) -> int:
    family = BUILT_IN[model_recipe.name]
    configured = model_recipe.config.get("image_size", family.defaults.get("image_size"))
    if data.image_size is not None and configured is not None and data.image_size != configured:
        raise RecipeError(f"data.image_size: {data.image_size} differs from model.config.image_size {configured}; "
                          f"for {model_recipe.name} they are the same thing, set one")
    return data.image_size or configured or family.config_class().image_size


DEFAULT_CROP_PCT = 0.875  # timm's


def _resize_policy(spec: InputSpec, data: DataRecipe, checkpoint_crop_pct: float | None) -> InputSpec:
    """``data.resize`` applied to the spec's ``crop_pct`` (None: squash)."""
    if data.resize == "squash":
        return dataclasses.replace(spec, crop_pct=None)
    if data.resize == "center_crop":
        return dataclasses.replace(spec, crop_pct=data.crop_pct or checkpoint_crop_pct or DEFAULT_CROP_PCT)
    return spec


def resolve_input_spec(model_recipe: ModelRecipe, data: DataRecipe) -> InputSpec:
    """The run's input size, mean and std, by the precedence in ``hfvision.spec`` (a pretrained checkpoint's
    image processor is read here; its weights are not)."""
    if model_recipe.name in BUILT_IN:
        spec = input_spec(_built_in_image_size(model_recipe, data), data.mean or BUILT_IN_MEAN, data.std or BUILT_IN_STD)
        spec = _resize_policy(spec, data, None)
    else:
        path = resolve_model_path(model_recipe.name)
        try:
            processor = AutoImageProcessor.from_pretrained(path, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise checkpoint_load_error("model.name", f"the image processor of '{model_recipe.name}'", exc) from None
        saved = processor_spec(processor)
        spec = input_spec(data.image_size or saved.image_size, data.mean or saved.mean, data.std or saved.std,
                          saved.crop_pct)
        spec = _resize_policy(spec, data, saved.crop_pct)
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
        if hasattr(config, "label_names"):  # timm's layout saves these, not id2label, and keeps a loaded list as is
            config.label_names = list(label_names)
        if config.model_type == "scratch_vit":  # its from_pretrained loads the weights at the config's size
            config.image_size = spec.image_size
        model, loading = _from_pretrained(path, config)
        notes = _loading_notes(model, loading, model_recipe.name)
        if saved_labels != config.id2label:  # other classes: a new head, even where the shapes match
            _reset_classifier(model)
            notes.append(f"classifier replaced: {len(saved_labels)} classes of the checkpoint -> {len(label_names)} "
                         f"({', '.join(label_names[:3])}{', ...' if len(label_names) > 3 else ''})")
        resized = set_input_size(model, spec.image_size)
        notes += [resized] if resized else []
        processor = AutoImageProcessor.from_pretrained(path, trust_remote_code=False)
    except HfvisionError:
        raise
    except (OSError, ValueError, pickle.UnpicklingError) as exc:
        raise checkpoint_load_error("model.name", f"'{model_recipe.name}'", exc) from None
    return BuiltModel(model, _describe_input(processor, spec, model), spec, notes)


def _square(size) -> int:
    return size if isinstance(size, int) else int(size[0])


def set_input_size(model: PreTrainedModel, image_size: int) -> str | None:
    """Make a pretrained model take ``image_size`` inputs, once, when it is built, and return a line saying what
    changed (None: nothing). Absolute position tables are resampled (timm's ``resample_abs_pos_embed``: prefix
    tokens kept, bicubic on the grid) and the config says the new size, so a saved dir loads at that size with
    plain ``from_pretrained``: ViT/DeiT (transformers) and timm ViTs. Swin keeps its relative position bias, which
    lives in windows, and takes sizes its windows tile; convolutional models take any size. (``scratch_vit``
    resamples itself in ``from_pretrained``, from the config.)"""
    config = model.config
    timm_model = getattr(model, "timm_model", None)
    if timm_model is not None:
        patch_embed = getattr(timm_model, "patch_embed", None)
        if patch_embed is None or tuple(patch_embed.img_size) == (image_size, image_size):
            return None  # a timm CNN takes any size; the processor config says which (``_describe_input``)
        old = _square(patch_embed.img_size)
        if not hasattr(timm_model, "set_input_size"):
            raise HfvisionError(f"data.image_size: {type(timm_model).__name__} cannot change its input size; "
                                f"use its own ({old})")
        _check_divisible(image_size, _square(patch_embed.patch_size), config.architecture)
        timm_model.set_input_size(img_size=(image_size, image_size))
        config.model_args = {**(config.model_args or {}), "img_size": image_size}
        return f"input size: {old} -> {image_size} px (position embeddings resampled once)"
    old = getattr(config, "image_size", None)
    if old is None or _square(old) == image_size:
        return None
    old = _square(old)
    embeddings = getattr(model.base_model, "embeddings", None)
    table = getattr(embeddings, "position_embeddings", None)
    patch = _square(getattr(config, "patch_size", 1))
    if config.model_type.startswith("swin") or config.model_type == "donut-swin":
        if table is not None:
            raise HfvisionError(f"data.image_size: {config.model_type} checkpoints with absolute position embeddings "
                                f"keep their size ({old})")
        _check_divisible(image_size, patch * config.window_size, config.model_type)
        note = "windows tile the new grid; relative position bias kept"
    elif isinstance(table, nn.Parameter) and table.dim() == 3:
        _check_divisible(image_size, patch, config.model_type)
        old_grid, new_grid = old // patch, image_size // patch
        with torch.no_grad():
            embeddings.position_embeddings = nn.Parameter(resample_abs_pos_embed(
                table.data, new_size=[new_grid, new_grid], old_size=[old_grid, old_grid],
                num_prefix_tokens=table.shape[1] - old_grid * old_grid), requires_grad=table.requires_grad)
        patches = embeddings.patch_embeddings
        patches.image_size = embeddings.image_size = (image_size, image_size)
        patches.num_patches = new_grid * new_grid
        note = "position embeddings resampled once"
    else:  # no position table (ConvNeXt, ResNet, EfficientNet, ...): any size
        note = "no position table to resample"
    config.image_size = image_size
    return f"input size: {old} -> {image_size} px ({note})"


def _check_divisible(image_size: int, step: int, name: str) -> None:
    if image_size % step:
        sizes = ", ".join(str(step * k) for k in range(max(1, image_size // step - 1), image_size // step + 3))
        raise HfvisionError(f"data.image_size: {name} takes sizes that are multiples of {step} ({sizes}, ...), "
                            f"got {image_size}")


def _reset_classifier(model: PreTrainedModel) -> None:
    """Fresh weights for the head's linear layers (``from_pretrained`` re-initialises a head only on a shape
    mismatch, so 5 new classes after 5 old ones would inherit the old head). The output layer starts at zero, as
    the ViT paper fine-tunes (Dosovitskiy et al., 2021, section 3.2: "a zero-initialized D x K feedforward layer"):
    the first loss is ln(classes) and the first gradients into the backbone carry no random head's noise. On the
    real ViT-Ti (the transfer study's 1-epoch lr probe) it lifts the first epoch's training accuracy from 65.5% to
    73.9% over nn.Linear's default init; test accuracy 83.7% -> 83.9% on 1,000 images, within noise."""
    linears = [module for module in find_classifier(model).modules() if isinstance(module, nn.Linear)]
    if not linears:
        return
    for module in linears[:-1]:  # layers before the output keep a random start, or no gradient would reach them
        module.reset_parameters()
    nn.init.zeros_(linears[-1].weight)
    if linears[-1].bias is not None:
        nn.init.zeros_(linears[-1].bias)


def _from_pretrained(path: str, config) -> tuple[PreTrainedModel, dict]:
    """The model and transformers' loading info, without its load report (hfvision says what it did instead)."""
    kwargs = dict(config=config, ignore_mismatched_sizes=True, trust_remote_code=False, output_loading_info=True)
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        try:
            return AutoModelForImageClassification.from_pretrained(path, attn_implementation="sdpa", **kwargs)
        except ValueError as exc:  # architectures without an SDPA path
            if "sdpa" not in str(exc).lower() and "scaled_dot_product_attention" not in str(exc):
                raise
            return AutoModelForImageClassification.from_pretrained(path, **kwargs)
    finally:
        transformers_logging.set_verbosity(verbosity)


def _loading_notes(model: PreTrainedModel, loading: dict, name: str) -> list[str]:
    """A line for weights outside the classifier that the checkpoint did not provide or did not fit."""
    classifier = {id(p) for p in find_classifier(model).parameters()}
    head = {n for n, p in model.named_parameters() if id(p) in classifier}
    keys = [k if isinstance(k, str) else k[0] for kind in ("missing_keys", "mismatched_keys")
            for k in loading.get(kind, [])]
    others = sorted(k for k in keys if k not in head)
    if not others:
        return []
    return [f"checkpoint: {len(others)} weight(s) of the model were not in '{name}' or did not fit, and start "
            f"random: {', '.join(others[:5])}{' ...' if len(others) > 5 else ''}"]


def _describe_input(processor, spec: InputSpec, model: PreTrainedModel):
    """Make the saved processor describe what training fed the model, so inference matches."""
    if hasattr(processor, "data_config"):  # timm: the processor is read from the model config's pretrained_cfg
        pretrained_cfg = {**(model.config.pretrained_cfg or {}), "input_size": [3, spec.image_size, spec.image_size],
                          "mean": list(spec.mean), "std": list(spec.std), "crop_pct": spec.crop_pct or 1.0,
                          "crop_mode": "center" if spec.crop_pct is not None else "squash"}
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
