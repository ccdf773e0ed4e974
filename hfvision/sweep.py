"""Sweeps: a recipe expanded into runs (a grid's cross product, named variants, or both), run one after
another through ``fit`` (the same path as ``scripts/finetune.py``), then one comparison table.

Each run lives in ``<sweep dir>/<run name>``. A run with ``metrics.json`` is finished and skipped; a run with a
``checkpoint/`` but no metrics is resumed; so re-running a sweep after a crash continues where it stopped.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from accelerate import PartialState

from hfvision.errors import RecipeError
from hfvision.evaluation.compare import write_run_comparison
from hfvision.recipe import load_recipe


@dataclass
class SweepRun:
    name: str
    overrides: list[str]


def _dump(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def _short(value) -> str:
    text = _dump(value) if not isinstance(value, str) else value
    return re.sub(r"[^A-Za-z0-9._-]+", "", text.split("/")[-1]) or "x"


def parse_grid_option(option: str) -> tuple[str, list]:
    """``model.config.patch_size=4,8`` -> ("model.config.patch_size", [4, 8])."""
    if "=" not in option:
        raise RecipeError(f"--grid '{option}': expected key=v1,v2,...")
    key, text = option.split("=", 1)
    return key.strip(), [yaml.safe_load(v) for v in text.split(",")]


def expand(grid: dict[str, list], variants: dict[str, dict], name_template: str | None) -> list[SweepRun]:
    """The runs of a sweep, in order: variants (or one unnamed base) x the grid's cross product."""
    keys = list(grid)
    runs = []
    for variant_name, changes in (variants or {"": {}}).items():
        for values in itertools.product(*(grid[k] for k in keys)):
            chosen = dict(zip(keys, values))
            if name_template:
                fields = {k.split(".")[-1]: _short(v) for k, v in {**changes, **chosen}.items()}
                try:
                    grid_name = name_template.format(**fields)
                except KeyError as exc:
                    raise RecipeError(f"sweep.name_template: {exc} is not a swept key; keys: {', '.join(fields)}") from None
            else:
                grid_name = "-".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in chosen.items())
            name = "_".join(part for part in (variant_name, grid_name) if part) or "base"
            overrides = [f"{k}={_dump(v)}" for k, v in {**changes, **chosen}.items()]
            runs.append(SweepRun(name, overrides))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise RecipeError("sweep.name_template: two runs get the same name; include every swept key")
    return runs


def run_sweep(recipe_path: str | Path, grid_options: list[str], overrides: list[str],
              name_template: str | None = None, fit=None) -> tuple[Path, list[dict]]:
    """Run every run of the sweep that is not finished; write ``comparison.md/.csv`` and curves. Returns rows."""
    if fit is None:
        from hfvision.pipeline import fit
    base = load_recipe(recipe_path, overrides)
    grid = dict(base.sweep.grid)
    grid.update(parse_grid_option(option) for option in grid_options)
    runs = expand(grid, base.sweep.variants, name_template or base.sweep.name_template)
    sweep_dir = Path(base.output_dir)
    for index, run in enumerate(runs, 1):
        run_dir = sweep_dir / run.name
        if (run_dir / "metrics.json").is_file():
            print(f"[{index}/{len(runs)}] {run.name}: finished, skipped")
            continue
        print(f"[{index}/{len(runs)}] {run.name}: {' '.join(run.overrides)}")
        recipe = load_recipe(recipe_path, overrides + run.overrides + [f"output_dir={run_dir}", "train.resume=true"])
        fit(recipe)
    if not PartialState().is_main_process:  # under torchrun / accelerate launch, one process writes the table
        return sweep_dir, []
    return sweep_dir, write_run_comparison([sweep_dir / run.name for run in runs], sweep_dir / "comparison.md")
