"""Every recipe field is documented once, in the schema; ``docs/recipe.md`` is generated from it, and the keys the
other docs (README, ARCHITECTURE, docs/, the study READMEs) name are keys of the schema."""

import dataclasses
import re
import typing
from pathlib import Path

from hfvision.recipe import reference

REPO = Path(__file__).resolve().parents[1]
# Sections whose keys are free (architecture fields, swept keys, run names)
FREE = ("model.config.", "sweep.grid.", "sweep.variants.")
# metrics.json's model block and a file name, which read like keys
NOT_KEYS = {"model.parameters", "model.trainable_parameters", "model.trainable_share", "model.flops_per_image",
            "model.onnx", "sweep.py"}


def schema_keys() -> set[str]:
    keys = set()
    for prefix, cls in reference.sections():
        hints = typing.get_type_hints(cls)
        keys |= {prefix + f.name for f in dataclasses.fields(cls)}
        keys |= {prefix + f.name + ".*" for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])}
    return keys


def test_every_recipe_field_has_a_docstring():
    for _, cls in reference.sections():
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in reference.field_docs(cls)]
        assert not missing, f"{cls.__name__}: no docstring under {', '.join(missing)}"


def test_docs_recipe_md_is_what_the_schema_renders():
    assert reference.REFERENCE.read_text() == reference.render(), \
        "docs/recipe.md differs from the schema: run python -m hfvision.recipe.reference"


def test_the_keys_other_docs_name_are_schema_keys():
    keys = schema_keys()
    docs = [REPO / "README.md", REPO / "ARCHITECTURE.md", *sorted((REPO / "docs").glob("*.md")),
            *sorted((REPO / "recipes").rglob("README.md"))]
    unknown = []
    for doc in docs:
        for key in re.findall(r"`((?:model|data|train|eval|hub|sweep)\.[A-Za-z_.*]+?)[`=:/ ]", doc.read_text()):
            if key not in keys | NOT_KEYS and not key.startswith(FREE):
                unknown.append(f"{doc.relative_to(REPO)}: {key}")
    assert not unknown, "\n".join(unknown)
