"""Typed recipes: the single source of truth for a run.

A recipe is YAML with the sections ``model``, ``data``, ``train``, ``eval``, ``hub`` (and ``sweep``) plus ``seed``
and ``output_dir``. Loading is strict: unknown keys (with a "did you mean" hint), wrong types and impossible values
raise :class:`RecipeError` with one line naming the key, before any work starts. Command-line overrides are dotted
``key=value`` pairs whose values are parsed as YAML scalars.

One job per module: ``schema`` (the sections, each field documented once), ``parser`` (YAML, overrides, types),
``rules`` (the values, and the feature-cache decision), ``reference`` (``docs/recipe.md``, generated from the
schema).
"""

from hfvision.recipe.parser import apply_overrides, load_recipe, parse_overrides, read_recipe_file, recipe_from_dict
from hfvision.recipe.rules import FeatureCacheDecision, decide_feature_cache, random_train_augmentations, validate
from hfvision.recipe.schema import (
    AugmentRecipe,
    DataRecipe,
    EvalRecipe,
    HubRecipe,
    LoraRecipe,
    ModelRecipe,
    Recipe,
    SweepRecipe,
    TrainRecipe,
)

__all__ = ["AugmentRecipe", "DataRecipe", "EvalRecipe", "FeatureCacheDecision", "HubRecipe", "LoraRecipe",
           "ModelRecipe", "Recipe", "SweepRecipe", "TrainRecipe", "apply_overrides", "decide_feature_cache",
           "load_recipe", "parse_overrides", "random_train_augmentations", "read_recipe_file", "recipe_from_dict",
           "validate"]
