"""Reading a recipe: YAML (strict: a key given twice is an error), dotted ``key=value`` overrides whose values are
YAML scalars, and the raw mapping turned into the typed sections of ``schema.py``, unknown keys rejected with the
valid ones listed (and a "did you mean"), each value checked against its field's type. ``load_recipe`` then applies
the value rules (``rules.validate``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from hfvision.errors import RecipeError
from hfvision.recipe.rules import validate
from hfvision.recipe.schema import Recipe

ON_OFF_KEYS = ("train.feature_cache",)  # YAML 1.1 reads the words on/off as booleans


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
