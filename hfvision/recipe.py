"""Typed recipes: the single source of truth for a run.

A recipe is YAML with the sections ``model``, ``data``, ``train``, ``eval``, ``hub`` plus ``seed`` and
``output_dir``. Loading is strict: unknown keys (with a "did you mean" hint), wrong types and
impossible values raise :class:`RecipeError` with one line naming the key, before any work starts.
Command-line overrides are dotted ``key=value`` pairs whose values are parsed as YAML scalars.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from hfvision.errors import RecipeError

TUNING_STRATEGIES = ("full", "head_only", "head_and_last_stage", "lora")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("cosine", "step", "constant")
MIXED_PRECISION = ("no", "fp16", "bf16")
AUTO_AUGMENT = ("randaugment", "trivialaugment")
TRACKERS = ("tensorboard", "none")
BAD_IMAGE_POLICIES = ("error", "skip")
FEATURE_CACHE_MODES = ("auto", "on", "off")
ON_OFF_KEYS = ("train.feature_cache",)  # YAML 1.1 reads the words on/off as booleans


@dataclass
class LoraRecipe:
    """LoRA adapters (``model.tuning: lora``); defaults as in peft's image-classification guide."""

    r: int = 16  # rank of the update
    alpha: float = 16.0  # the update is scaled by alpha / r
    dropout: float = 0.1  # on the adapter's input
    target_modules: Optional[list] = None  # module-name suffixes; None: the family's (hfvision/models/families.py)


@dataclass
class ModelRecipe:
    # Hub id, local checkpoint dir, run dir, or a built-in family: scratch_vit, scratch_swin, resnet18_cifar.
    name: str = "scratch_vit"
    tuning: str = "full"  # full | head_only | head_and_last_stage | lora
    # Architecture fields for scratch families; for pretrained checkpoints, config attributes to override.
    config: dict = field(default_factory=dict)
    lora: LoraRecipe = field(default_factory=LoraRecipe)


@dataclass
class AugmentRecipe:
    random_crop_padding: int = 4  # 0 turns the crop off
    horizontal_flip: bool = True
    auto_augment: Optional[str] = None  # randaugment | trivialaugment
    mixup_alpha: float = 0.0  # 0 turns mixup off
    cutmix_alpha: float = 0.0  # 0 turns cutmix off


@dataclass
class DataRecipe:
    dataset: str = "synthetic"  # "synthetic", a Hub id, or a local dir load_dataset reads
    image_column: Optional[str] = None  # found from the features when None
    label_column: Optional[str] = None
    val_fraction: float = 0.1
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None
    image_size: Optional[int] = None  # None: the image processor's (pretrained) or model.config's (scratch)
    mean: Optional[list] = None  # None: the image processor's
    std: Optional[list] = None
    on_bad_image: str = "error"  # an unreadable image: "error" stops naming it, "skip" drops it and reports it
    classes: Optional[list] = None  # train on these classes only (names or ids), re-indexed in this order
    augment: AugmentRecipe = field(default_factory=AugmentRecipe)
    # With train.feature_cache and a random train-time augmentation: cache this many augmented views per
    # training image, one per epoch in turn. None: no views (the cache is then used only when it is exact).
    cached_views: Optional[int] = None


@dataclass
class TrainRecipe:
    epochs: int = 3
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    optimizer: str = "adamw"
    momentum: float = 0.9  # SGD only
    scheduler: str = "cosine"
    warmup_epochs: float = 0.0
    step_size_epochs: int = 10  # step scheduler only
    step_gamma: float = 0.1  # step scheduler only
    gradient_accumulation_steps: int = 1
    max_grad_norm: Optional[float] = 1.0  # None turns clipping off
    mixed_precision: str = "no"
    # Convolutional models (the ResNets): weights and input batches in channels-last memory format, which the
    # CPU (oneDNN) and GPU convolution kernels run faster; the same numbers up to float rounding.
    channels_last: bool = False
    label_smoothing: float = 0.0
    ema_decay: Optional[float] = None  # e.g. 0.999; None turns EMA off
    early_stopping_patience: Optional[int] = None  # epochs without a better val accuracy
    resume: bool = False
    # Checkpoints inside an epoch (besides every epoch end), for exact resume after a kill or preemption.
    checkpoint_every_steps: Optional[int] = None  # optimiser steps
    checkpoint_every_minutes: Optional[float] = None
    # Train for this many minutes of wall-clock (validation included): the LR schedule is sized to the steps that
    # fit, training stops when it is spent, then best/ is evaluated; train.epochs is the upper bound.
    time_budget_minutes: Optional[float] = None
    report_to: str = "tensorboard"
    layer_decay: Optional[float] = None  # layer-wise LR decay: layer i of L gets lr * layer_decay ** (L + 1 - i)
    allow_unusual_lr: bool = False  # silence the warning about learning rates that rarely suit the tuning mode
    # Head-only runs: train the classifier on the frozen part's output, computed once per split and cached on
    # disk. auto: when that is exact (no random train-time augmentation) or data.cached_views is set.
    feature_cache: str = "auto"


@dataclass
class EvalRecipe:
    batch_size: int = 256
    latency_batch_size: int = 64
    explain: bool = False  # write a per-class Grad-CAM grid into the run dir


@dataclass
class HubRecipe:
    push: bool = False
    repo_id: Optional[str] = None
    private: bool = False


@dataclass
class SweepRecipe:
    """Runs that ``scripts/sweep.py`` expands this recipe into (``scripts/finetune.py`` ignores it)."""

    grid: dict = field(default_factory=dict)  # dotted key -> list of values; the cross product is run
    variants: dict = field(default_factory=dict)  # run name -> {dotted key: value}; each crossed with the grid
    name_template: Optional[str] = None  # e.g. "p{patch_size}_d{num_hidden_layers}" (last part of each key)


@dataclass
class Recipe:
    seed: int = 42
    output_dir: str = "runs/default"
    model: ModelRecipe = field(default_factory=ModelRecipe)
    data: DataRecipe = field(default_factory=DataRecipe)
    train: TrainRecipe = field(default_factory=TrainRecipe)
    eval: EvalRecipe = field(default_factory=EvalRecipe)
    hub: HubRecipe = field(default_factory=HubRecipe)
    sweep: SweepRecipe = field(default_factory=SweepRecipe)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


# ----------------------------------------------------------------------------------------------
# Parsing


def _unwrap_optional(tp):
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _coerce(value, tp, key: str):
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are expected."""
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise RecipeError(f"{key}: expected {_type_name(tp)}, got null")
    origin = typing.get_origin(tp) or tp
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise RecipeError(f"{key}: expected a mapping of {_field_list(tp)}, got {value!r}")
        return _build(tp, value, key + ".")
    if origin is float and isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:  # an integer of hundreds of digits
            raise RecipeError(f"{key}: expected a finite number, got an integer of {len(str(value))} digits") from None
        if not math.isfinite(value):  # .nan, .inf: a run would "succeed" at chance with NaN weights
            raise RecipeError(f"{key}: expected a finite number, got {value}")
        return value
    if origin is str and isinstance(value, bool) and key in ON_OFF_KEYS:
        return "on" if value else "off"
    if origin is int and isinstance(value, bool):
        raise RecipeError(f"{key}: expected an integer, got {value!r}")
    if origin is list and isinstance(value, (list, tuple)):
        return list(value)
    if not isinstance(value, origin):
        raise RecipeError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def _type_name(tp) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping",
            list: "a list"}.get(typing.get_origin(tp) or tp, str(tp))


def _field_list(cls) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls))


def _build(cls, raw: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            hint = difflib.get_close_matches(str(key), names, n=1)
            did_you_mean = f" (did you mean '{prefix}{hint[0]}'?)" if hint else ""
            raise RecipeError(f"unknown key '{prefix}{key}'{did_you_mean}; valid keys: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RecipeError(f"override '{dotted}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise RecipeError(f"override '{item}': expected key=value, e.g. train.epochs=3")
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text) if text != "" else None
    except yaml.YAMLError:
        value = text
    return key.strip(), value


def parse_overrides(overrides: list[str]) -> dict:
    """Turn ``["train.epochs=3", "data.mean=[0.5,0.5,0.5]"]`` into a nested dict of YAML values."""
    return apply_overrides({}, overrides)


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Set each dotted key in ``tree``; a whole mapping (``model.config={...}``) replaces, it does not merge."""
    for item in overrides:
        _set_dotted(tree, *_parse_override(item))
    return tree


def recipe_from_dict(raw: dict) -> Recipe:
    recipe = _build(Recipe, raw)
    validate(recipe)
    return recipe


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error, not last-wins."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise RecipeError(f"a key must be a name, got {key!r} (line {key_node.start_mark.line + 1})")
            if key in seen:
                raise RecipeError(f"key '{key}' is given twice (line {key_node.start_mark.line + 1}); keep one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_recipe_file(path: str | os.PathLike) -> dict:
    """The raw mapping of a YAML recipe file, or one ``RecipeError`` line naming the file and what is wrong."""
    path = Path(path)
    if path.is_dir():
        raise RecipeError(f"recipe file {path} is a directory; give the path of a .yaml recipe in it")
    if not path.is_file():
        raise RecipeError(f"recipe file {path} does not exist")
    try:
        raw = yaml.load(path.read_bytes().decode("utf-8"), Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError as exc:
        raise RecipeError(f"recipe file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except RecipeError as exc:
        raise RecipeError(f"recipe file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise RecipeError(f"recipe file {path} is not valid YAML: {first}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe file {path}: expected a mapping at the top level")
    return raw


def load_recipe(path: str | os.PathLike | None, overrides: list[str] | None = None) -> Recipe:
    """Load a YAML recipe (or the defaults when ``path`` is None) and apply dotted overrides."""
    raw: dict = {}
    if path is not None:
        raw = read_recipe_file(path)
    apply_overrides(raw, overrides or [])
    return recipe_from_dict(raw)


# ----------------------------------------------------------------------------------------------
# Validation of values


def _is_finite_number(value) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise RecipeError(message)


def _one_of(key: str, value, allowed) -> None:
    _require(value in allowed, f"{key}: '{value}' is not one of {', '.join(map(str, allowed))}")


def validate(recipe: Recipe) -> None:
    m, d, t, e, h = recipe.model, recipe.data, recipe.train, recipe.eval, recipe.hub
    _one_of("model.tuning", m.tuning, TUNING_STRATEGIES)
    _validate_lora(m)
    _require(bool(m.name), "model.name: expected a Hub id, a local dir or a built-in family")
    _require(0.0 < d.val_fraction < 1.0, f"data.val_fraction: expected a number in (0, 1), got {d.val_fraction}")
    for key in ("max_train_samples", "max_eval_samples", "image_size"):
        value = getattr(d, key)
        _require(value is None or value > 0, f"data.{key}: expected a positive integer or null, got {value}")
    for key in ("mean", "std"):
        value = getattr(d, key)
        _require(value is None or (len(value) == 3 and all(_is_finite_number(v) for v in value)),
                 f"data.{key}: expected three numbers (finite, one per RGB channel) or null, got {value}")
    _require(d.std is None or all(v > 0 for v in d.std), f"data.std: expected positive numbers, got {d.std}")
    _one_of("data.on_bad_image", d.on_bad_image, BAD_IMAGE_POLICIES)
    _check_dataset_path(d.dataset)
    _validate_classes(d.classes)
    a = d.augment
    _require(a.random_crop_padding >= 0, f"data.augment.random_crop_padding: expected >= 0, got {a.random_crop_padding}")
    _require(d.image_size is None or a.random_crop_padding < d.image_size,
             f"data.augment.random_crop_padding: expected less than data.image_size ({d.image_size}), "
             f"got {a.random_crop_padding}")
    _require(a.auto_augment is None or a.auto_augment in AUTO_AUGMENT,
             f"data.augment.auto_augment: '{a.auto_augment}' is not one of {', '.join(AUTO_AUGMENT)} or null")
    _require(a.mixup_alpha >= 0, f"data.augment.mixup_alpha: expected >= 0, got {a.mixup_alpha}")
    _require(a.cutmix_alpha >= 0, f"data.augment.cutmix_alpha: expected >= 0, got {a.cutmix_alpha}")

    _require(t.epochs >= 1, f"train.epochs: expected a positive integer, got {t.epochs}")
    _require(t.batch_size >= 1, f"train.batch_size: expected a positive integer, got {t.batch_size}")
    _require(t.learning_rate > 0, f"train.learning_rate: expected a positive number, got {t.learning_rate}")
    _require(t.weight_decay >= 0, f"train.weight_decay: expected >= 0, got {t.weight_decay}")
    _one_of("train.optimizer", t.optimizer, OPTIMIZERS)
    _one_of("train.scheduler", t.scheduler, SCHEDULERS)
    _one_of("train.mixed_precision", t.mixed_precision, MIXED_PRECISION)
    _one_of("train.report_to", t.report_to, TRACKERS)
    _require(t.warmup_epochs >= 0, f"train.warmup_epochs: expected >= 0, got {t.warmup_epochs}")
    _require(t.step_size_epochs >= 1, f"train.step_size_epochs: expected a positive integer, got {t.step_size_epochs}")
    _require(0 < t.step_gamma <= 1, f"train.step_gamma: expected a number in (0, 1], got {t.step_gamma}")
    _require(t.gradient_accumulation_steps >= 1,
             f"train.gradient_accumulation_steps: expected a positive integer, got {t.gradient_accumulation_steps}")
    _require(t.max_grad_norm is None or t.max_grad_norm > 0,
             f"train.max_grad_norm: expected a positive number or null, got {t.max_grad_norm}")
    _require(0 <= t.label_smoothing < 1, f"train.label_smoothing: expected a number in [0, 1), got {t.label_smoothing}")
    _require(t.ema_decay is None or 0 < t.ema_decay < 1, f"train.ema_decay: expected a number in (0, 1) or null, got {t.ema_decay}")
    _require(t.early_stopping_patience is None or t.early_stopping_patience >= 1,
             f"train.early_stopping_patience: expected a positive integer or null, got {t.early_stopping_patience}")
    _require(t.checkpoint_every_steps is None or t.checkpoint_every_steps >= 1,
             f"train.checkpoint_every_steps: expected a positive integer or null, got {t.checkpoint_every_steps}")
    _require(t.checkpoint_every_minutes is None or t.checkpoint_every_minutes > 0,
             f"train.checkpoint_every_minutes: expected a positive number or null, got {t.checkpoint_every_minutes}")
    _require(t.time_budget_minutes is None or t.time_budget_minutes > 0,
             f"train.time_budget_minutes: expected a positive number or null, got {t.time_budget_minutes}")
    _require(t.layer_decay is None or 0 < t.layer_decay <= 1,
             f"train.layer_decay: expected a number in (0, 1] or null, got {t.layer_decay}")
    _validate_feature_cache(recipe)
    _require(e.batch_size >= 1, f"eval.batch_size: expected a positive integer, got {e.batch_size}")
    _require(e.latency_batch_size >= 1, f"eval.latency_batch_size: expected a positive integer, got {e.latency_batch_size}")
    _require(not h.push or bool(h.repo_id), "hub.repo_id: required when hub.push is true (e.g. your-name/vit-cifar10)")
    _require(0 <= recipe.seed < 2 ** 32, f"seed: expected an integer in [0, 2**32), got {recipe.seed}")
    _require(bool(recipe.output_dir), "output_dir: expected a directory path")
    _require("\x00" not in recipe.output_dir, f"output_dir: a path cannot hold a NUL byte, got {recipe.output_dir!r}")
    for key, values in recipe.sweep.grid.items():
        _require(isinstance(values, list) and len(values) > 0, f"sweep.grid.{key}: expected a non-empty list of values")
    for name, changes in recipe.sweep.variants.items():
        _require(isinstance(changes, dict), f"sweep.variants.{name}: expected a mapping of dotted keys to values")


def _validate_lora(m: ModelRecipe) -> None:
    lora = m.lora
    _require(m.tuning == "lora" or lora == LoraRecipe(),
             f"model.lora: only used with model.tuning: lora (model.tuning is {m.tuning})")
    _require(lora.r >= 1, f"model.lora.r: expected a positive integer, got {lora.r}")
    _require(lora.alpha > 0, f"model.lora.alpha: expected a positive number, got {lora.alpha}")
    _require(0 <= lora.dropout < 1, f"model.lora.dropout: expected a number in [0, 1), got {lora.dropout}")
    targets = lora.target_modules
    _require(targets is None or (len(targets) > 0 and all(isinstance(t, str) and t for t in targets)),
             f"model.lora.target_modules: expected a non-empty list of module names or null, got {targets}")


def _validate_classes(classes: list | None) -> None:
    if classes is None:
        return
    _require(len(classes) >= 2 and all(isinstance(c, str) or (isinstance(c, int) and not isinstance(c, bool) and c >= 0)
                                       for c in classes),
             f"data.classes: expected a list of at least two class names or ids (integers >= 0), got {classes}")
    _require(len(set(classes)) == len(classes), f"data.classes: a class is listed twice in {classes}")
def random_train_augmentations(augment: AugmentRecipe) -> list[str]:
    """The recipe's random train-time augmentations that act on single images, by name."""
    names = [("random crop", augment.random_crop_padding > 0), ("horizontal flip", augment.horizontal_flip),
             (augment.auto_augment, augment.auto_augment is not None)]
    return [name for name, active in names if active]


def _validate_feature_cache(recipe: Recipe) -> None:
    mode, views, augment = recipe.train.feature_cache, recipe.data.cached_views, recipe.data.augment
    _one_of("train.feature_cache", mode, FEATURE_CACHE_MODES)
    _require(views is None or views >= 1, f"data.cached_views: expected a positive integer or null, got {views}")
    if mode == "off":
        _require(views is None, "data.cached_views: only used with the feature cache; remove it or set "
                                "train.feature_cache: auto")
        return
    if views is not None or mode == "on":
        _require(recipe.model.tuning == "head_only", f"train.feature_cache: caches the frozen backbone of "
                 f"model.tuning: head_only runs, not {recipe.model.tuning}")
        _require(augment.mixup_alpha == 0 and augment.cutmix_alpha == 0,
                 "train.feature_cache: mixup/cutmix mix pixels within a batch, which cached features cannot "
                 "do; set data.augment.mixup_alpha and cutmix_alpha to 0 or train.feature_cache: off")
    if views is not None:
        _require(bool(random_train_augmentations(augment)),
                 "data.cached_views: there is no random train-time augmentation to vary between views; remove it")
    elif mode == "on":
        _require(not random_train_augmentations(augment),
                 f"train.feature_cache: on with random train-time augmentation "
                 f"({', '.join(random_train_augmentations(augment))}) needs data.cached_views: K (K augmented "
                 f"views per image), or switch the augmentation off")


def _check_dataset_path(dataset: str) -> None:
    looks_local = dataset.startswith(("/", "./", "../", "~")) or os.sep * 2 in dataset
    if looks_local and not Path(dataset).expanduser().exists():
        raise RecipeError(f"data.dataset: directory {dataset} does not exist")
