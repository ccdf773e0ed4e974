"""Run a sweep: a recipe's `sweep:` grid/variants and --grid options, one run after another, then a table.

    hfvision sweep recipes/studies/hw6_cifar100/vit_grid.yaml
    hfvision sweep recipes/quickstart.yaml --grid model.config.patch_size=4,8 \
        --grid model.config.num_hidden_layers=1,2 output_dir=runs/patch_depth train.epochs=2

Options and key=value overrides may come in any order.
"""

import argparse
from pathlib import Path

from accelerate import PartialState

from hfvision.errors import HfvisionError
from hfvision.evaluation.compare import runs_markdown_table
from hfvision.sweep import run_sweep


def add_arguments(parser):
    parser.add_argument("recipe", type=Path)
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run (output_dir is the sweep dir)")
    parser.add_argument("--grid", action="append", default=[], help="dotted.key=v1,v2 (repeat for a cross product)")
    parser.add_argument("--name-template", default=None, help='run names, e.g. "p{patch_size}_d{num_hidden_layers}"')


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hfvision sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    # options and key=value overrides in any order (plain parse_args stops taking overrides after the first option)
    args, unknown = parser.parse_known_intermixed_args(argv)
    if unknown:
        raise HfvisionError(f"sweep: unknown argument {unknown[0]!r}; options are --grid, --name-template, "
                            "and overrides are key=value")
    return args


def run(args):
    sweep_dir, rows = run_sweep(args.recipe, args.grid, args.overrides, args.name_template)
    if PartialState().is_main_process:
        print(runs_markdown_table(rows))
        print(f"wrote {sweep_dir / 'comparison.md'} and {sweep_dir / 'comparison.csv'}")
