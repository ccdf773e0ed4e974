"""The rules on a recipe's values, one function per section: an impossible value raises ``RecipeError`` with one
line naming the key and what is allowed, before any work starts. The feature-cache decision lives here too
(``decide_feature_cache``): the same reasoning says whether a run uses the cache and why a recipe that asks for it
cannot have it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from hfvision.errors import RecipeError
from hfvision.recipe.schema import CHOICES, AugmentRecipe, DataRecipe, LoraRecipe, ModelRecipe, Recipe, TrainRecipe


def validate(recipe: Recipe) -> None:
    _validate_model(recipe.model)
    _validate_data(recipe.data)
    _validate_augment(recipe.data.augment, recipe.data.image_size)
    _validate_train(recipe.train)
    _validate_feature_cache(recipe)
    _validate_eval_and_hub(recipe)
    _validate_run(recipe)
    _validate_streaming(recipe)


def _validate_streaming(recipe: Recipe) -> None:
    """What a streamed training split cannot do: it is read once per epoch, in an order known only as it comes."""
    if not recipe.data.streaming:
        return
    _require(recipe.train.gradient_accumulation_steps == 1,
             "data.streaming: train.gradient_accumulation_steps must be 1 (a stream's epoch end is not known ahead, "
             "so a partial accumulation would carry into the next epoch)")
    _require(recipe.train.feature_cache != "on", "train.feature_cache: on needs the training images stored; "
             "data.streaming reads them once per epoch (set train.feature_cache: auto or off)")


def _is_finite_number(value) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _require(condition: bool, message: str | None) -> None:
    if not condition:
        raise RecipeError(message)


def _one_of(key: str, value) -> None:
    allowed = CHOICES[key]
    _require(value in allowed, f"{key}: '{value}' is not one of {', '.join(map(str, allowed))}")


def _validate_model(m: ModelRecipe) -> None:
    _one_of("model.tuning", m.tuning)
    lora = m.lora
    _require(m.tuning == "lora" or lora == LoraRecipe(),
             f"model.lora: only used with model.tuning: lora (model.tuning is {m.tuning})")
    _require(lora.r >= 1, f"model.lora.r: expected a positive integer, got {lora.r}")
    _require(lora.alpha > 0, f"model.lora.alpha: expected a positive number, got {lora.alpha}")
    _require(0 <= lora.dropout < 1, f"model.lora.dropout: expected a number in [0, 1), got {lora.dropout}")
    targets = lora.target_modules
    _require(targets is None or (len(targets) > 0 and all(isinstance(t, str) and t for t in targets)),
             f"model.lora.target_modules: expected a non-empty list of module names or null, got {targets}")
    _require(bool(m.name), "model.name: expected a Hub id, a local dir or a built-in family")


def _validate_data(d: DataRecipe) -> None:
    _require(0.0 < d.val_fraction < 1.0, f"data.val_fraction: expected a number in (0, 1), got {d.val_fraction}")
    for key in ("max_train_samples", "max_eval_samples", "image_size", "decode_workers"):
        value = getattr(d, key)
        _require(value is None or value > 0, f"data.{key}: expected a positive integer or null, got {value}")
    for key in ("mean", "std"):
        value = getattr(d, key)
        _require(value is None or (len(value) == 3 and all(_is_finite_number(v) for v in value)),
                 f"data.{key}: expected three numbers (finite, one per RGB channel) or null, got {value}")
    _require(d.std is None or all(v > 0 for v in d.std), f"data.std: expected positive numbers, got {d.std}")
    _one_of("data.on_bad_image", d.on_bad_image)
    _one_of("data.resize", d.resize)
    _require(d.crop_pct is None or (_is_finite_number(d.crop_pct) and 0 < d.crop_pct <= 1),
             f"data.crop_pct: expected a number in (0, 1] or null, got {d.crop_pct}")
    _require(d.crop_pct is None or d.resize == "center_crop",
             f"data.crop_pct: only used with data.resize: center_crop (data.resize is {d.resize})")
    looks_local = d.dataset.startswith(("/", "./", "../", "~")) or os.sep * 2 in d.dataset
    _require(not looks_local or Path(d.dataset).expanduser().exists(),
             f"data.dataset: directory {d.dataset} does not exist")
    _validate_classes(d.classes)
    _require(not d.streaming or d.classes is None,
             "data.streaming: data.classes is not supported on a stream; select the classes when writing the shards")


def _validate_classes(classes: list | None) -> None:
    if classes is None:
        return
    _require(len(classes) >= 2 and all(isinstance(c, str) or (isinstance(c, int) and not isinstance(c, bool) and c >= 0)
                                       for c in classes),
             f"data.classes: expected a list of at least two class names or ids (integers >= 0), got {classes}")
    _require(len(set(classes)) == len(classes), f"data.classes: a class is listed twice in {classes}")


def _validate_augment(a: AugmentRecipe, image_size: int | None) -> None:
    _require(a.random_crop_padding >= 0, f"data.augment.random_crop_padding: expected >= 0, got {a.random_crop_padding}")
    _require(image_size is None or a.random_crop_padding < image_size,
             f"data.augment.random_crop_padding: expected less than data.image_size ({image_size}), "
             f"got {a.random_crop_padding}")
    allowed = CHOICES["data.augment.auto_augment"]
    _require(a.auto_augment is None or a.auto_augment in allowed,
             f"data.augment.auto_augment: '{a.auto_augment}' is not one of {', '.join(allowed)} or null")
    _require(a.mixup_alpha >= 0, f"data.augment.mixup_alpha: expected >= 0, got {a.mixup_alpha}")
    _require(a.cutmix_alpha >= 0, f"data.augment.cutmix_alpha: expected >= 0, got {a.cutmix_alpha}")
    _validate_random_resized_crop(a)


def _validate_random_resized_crop(a: AugmentRecipe) -> None:
    defaults = AugmentRecipe()
    for key, upper in (("random_resized_crop_scale", 1.0), ("random_resized_crop_ratio", math.inf)):
        value, bounds = getattr(a, key), "0 < lo <= hi" + (" <= 1" if upper == 1.0 else "")
        _require(len(value) == 2 and all(_is_finite_number(v) for v in value) and 0 < value[0] <= value[1] <= upper,
                 f"data.augment.{key}: expected two numbers [lo, hi] with {bounds}, got {value}")
        _require(a.random_resized_crop or value == getattr(defaults, key),
                 f"data.augment.{key}: only used with data.augment.random_resized_crop: true")
    _require(not (a.random_resized_crop and a.random_crop_padding > 0),
             f"data.augment.random_resized_crop: an alternative to the pad-and-crop of "
             f"data.augment.random_crop_padding ({a.random_crop_padding}), not an addition; set "
             f"data.augment.random_crop_padding: 0")


def _validate_train(t: TrainRecipe) -> None:
    for key in ("epochs", "batch_size", "step_size_epochs", "gradient_accumulation_steps"):
        _require(getattr(t, key) >= 1, f"train.{key}: expected a positive integer, got {getattr(t, key)}")
    _require(t.learning_rate > 0, f"train.learning_rate: expected a positive number, got {t.learning_rate}")
    for key in ("optimizer", "scheduler", "mixed_precision", "report_to", "feature_cache"):
        _one_of(f"train.{key}", getattr(t, key))
    for key in ("weight_decay", "warmup_epochs"):
        _require(getattr(t, key) >= 0, f"train.{key}: expected >= 0, got {getattr(t, key)}")
    _require(0 < t.step_gamma <= 1, f"train.step_gamma: expected a number in (0, 1], got {t.step_gamma}")
    _require(0 <= t.label_smoothing < 1, f"train.label_smoothing: expected a number in [0, 1), got {t.label_smoothing}")
    _require(t.ema_decay is None or 0 < t.ema_decay < 1,
             f"train.ema_decay: expected a number in (0, 1) or null, got {t.ema_decay}")
    _require(t.layer_decay is None or 0 < t.layer_decay <= 1,
             f"train.layer_decay: expected a number in (0, 1] or null, got {t.layer_decay}")
    for key in ("early_stopping_patience", "checkpoint_every_steps"):
        value = getattr(t, key)
        _require(value is None or value >= 1, f"train.{key}: expected a positive integer or null, got {value}")
    for key in ("max_grad_norm", "checkpoint_every_minutes", "time_budget_minutes"):
        value = getattr(t, key)
        _require(value is None or value > 0, f"train.{key}: expected a positive number or null, got {value}")


def _validate_eval_and_hub(recipe: Recipe) -> None:
    e, h = recipe.eval, recipe.hub
    _require(e.batch_size >= 1, f"eval.batch_size: expected a positive integer, got {e.batch_size}")
    _require(e.latency_batch_size >= 1,
             f"eval.latency_batch_size: expected a positive integer, got {e.latency_batch_size}")
    _require(not h.push or bool(h.repo_id), "hub.repo_id: required when hub.push is true (e.g. your-name/vit-cifar10)")


def _validate_run(recipe: Recipe) -> None:
    _require(0 <= recipe.seed < 2 ** 32, f"seed: expected an integer in [0, 2**32), got {recipe.seed}")
    _require(bool(recipe.output_dir), "output_dir: expected a directory path")
    _require("\x00" not in recipe.output_dir, f"output_dir: a path cannot hold a NUL byte, got {recipe.output_dir!r}")
    for key, values in recipe.sweep.grid.items():
        _require(isinstance(values, list) and len(values) > 0, f"sweep.grid.{key}: expected a non-empty list of values")
    for name, changes in recipe.sweep.variants.items():
        _require(isinstance(changes, dict), f"sweep.variants.{name}: expected a mapping of dotted keys to values")


# ----------------------------------------------------------------------------------------------
# The feature cache


def random_train_augmentations(augment: AugmentRecipe) -> list[str]:
    """The recipe's random train-time augmentations that act on single images, by name."""
    names = [("random resized crop", augment.random_resized_crop), ("random crop", augment.random_crop_padding > 0),
             ("horizontal flip", augment.horizontal_flip),
             (augment.auto_augment, augment.auto_augment is not None)]
    return [name for name, active in names if active]


@dataclass(frozen=True)
class FeatureCacheDecision:
    """Whether a run trains on cached features, with how many augmented views (None: exact features), and why; and
    ``refusal``, the error for a recipe that asks for the cache (``on``, or ``data.cached_views``) it cannot have."""

    enabled: bool
    views: int | None
    reason: str
    refusal: str | None = None


def decide_feature_cache(recipe: Recipe) -> FeatureCacheDecision:
    """``train.feature_cache`` (auto | on | off) and ``data.cached_views`` resolved for a recipe."""
    mode, augment, views, tuning = (recipe.train.feature_cache, recipe.data.augment, recipe.data.cached_views,
                                    recipe.model.tuning)
    if mode == "off":
        return FeatureCacheDecision(False, None, "train.feature_cache: off")
    if recipe.data.streaming:
        return FeatureCacheDecision(False, None, "data.streaming: the training images are read once per epoch, "
                                                 "never stored")
    if tuning != "head_only":
        return FeatureCacheDecision(False, None, f"model.tuning: {tuning} trains the backbone",
                                    f"train.feature_cache: caches the frozen backbone of model.tuning: head_only "
                                    f"runs, not {tuning}")
    if augment.mixup_alpha > 0 or augment.cutmix_alpha > 0:
        return FeatureCacheDecision(False, None, "mixup/cutmix mix pixels within each batch",
                                    "train.feature_cache: mixup/cutmix mix pixels within a batch, which cached "
                                    "features cannot do; set data.augment.mixup_alpha and cutmix_alpha to 0 or "
                                    "train.feature_cache: off")
    augmentations = ", ".join(random_train_augmentations(augment))
    if views is not None and not augmentations:
        return FeatureCacheDecision(False, None, "no random train-time augmentation to vary between views",
                                    "data.cached_views: there is no random train-time augmentation to vary between "
                                    "views; remove it")
    if views is not None:
        return FeatureCacheDecision(True, views, f"{views} augmented view(s) of each training image "
                                                 f"({augmentations}), epoch e reads view e mod {views}; "
                                                 f"validation features exact")
    if augmentations:
        return FeatureCacheDecision(False, None, f"random train-time augmentation ({augmentations}) changes the "
                                                 f"backbone's input every epoch; data.cached_views: K caches K views",
                                    f"train.feature_cache: on with random train-time augmentation ({augmentations}) "
                                    f"needs data.cached_views: K (K augmented views per image), or switch the "
                                    f"augmentation off")
    return FeatureCacheDecision(True, None, "head-only, no random train-time augmentation: exact; the frozen part "
                                            "runs once per split")


def _validate_feature_cache(recipe: Recipe) -> None:
    mode, views = recipe.train.feature_cache, recipe.data.cached_views
    _require(views is None or views >= 1, f"data.cached_views: expected a positive integer or null, got {views}")
    if mode == "off":
        _require(views is None, "data.cached_views: only used with the feature cache; remove it or set "
                                "train.feature_cache: auto")
        return
    decision = decide_feature_cache(recipe)
    _require(not (mode == "on" or views is not None) or decision.refusal is None, decision.refusal)
