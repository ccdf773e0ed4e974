"""``docs/recipe.md``, the reference of every recipe key, generated from the schema: each field's type, default,
allowed values and the docstring under it in ``schema.py``. ``python -m hfvision.recipe.reference`` rewrites the
file; ``tests/test_recipe_reference.py`` fails when the committed file differs from what this renders.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import sys
import typing
from pathlib import Path

from hfvision.recipe import schema

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "recipe.md"
TYPE_NAMES = {int: "integer", float: "number", str: "string", bool: "true/false", dict: "mapping", list: "list"}


def field_docs(cls) -> dict[str, str]:
    """Field name -> the docstring written under it in the class body."""
    body = ast.parse(inspect.getsource(cls)).body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split()).replace("``", "`")
    return docs


def _type_name(hint) -> str:
    args = typing.get_args(hint) if typing.get_origin(hint) is typing.Union else ()
    if args:
        return " or ".join(_type_name(a) for a in args if a is not type(None)) + " or null"
    return TYPE_NAMES[hint]


def _default(f: dataclasses.Field) -> str:
    value = f.default_factory() if f.default is dataclasses.MISSING else f.default
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return str(value)


def sections(cls=schema.Recipe, prefix: str = "") -> list[tuple[str, type]]:
    """(dotted prefix, dataclass) of the recipe and every section below it, in the schema's order."""
    found = [(prefix, cls)]
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            found += sections(hints[f.name], f"{prefix}{f.name}.")
    return found


def render() -> str:
    lines = ["# Recipe keys", "",
             "Generated from the dataclasses in `hfvision/recipe/schema.py` by `python -m hfvision.recipe.reference`;",
             "edit the docstrings there, not this file (`tests/test_recipe_reference.py` checks the two agree).", ""]
    for prefix, cls in sections():
        hints, docs = typing.get_type_hints(cls), field_docs(cls)
        title = f"`{prefix.rstrip('.')}`" if prefix else "Top level"
        lines += [f"## {title}", "", inspect.cleandoc(cls.__doc__).replace("``", "`"), "",
                  "| key | type | default | what it does |", "| --- | --- | --- | --- |"]
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                continue  # a section of its own below
            key = prefix + f.name
            choices = schema.CHOICES.get(key)
            kind = " \\| ".join(f"`{c}`" for c in choices) if choices else _type_name(hints[f.name])
            if choices and typing.get_origin(hints[f.name]) is typing.Union:
                kind += " or null"
            lines.append(f"| `{key}` | {kind} | `{_default(f)}` | {docs[f.name]} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    REFERENCE.parent.mkdir(exist_ok=True)
    REFERENCE.write_text(render())
    print(f"wrote {REFERENCE}", file=sys.stderr)


if __name__ == "__main__":
    main()
