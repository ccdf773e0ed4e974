"""Run a sweep: a recipe's `sweep:` grid/variants and --grid options, one run after another, then a table.

    python scripts/sweep.py recipes/studies/hw6_cifar100/vit_grid.yaml
    python scripts/sweep.py recipes/quickstart.yaml --grid model.config.patch_size=4,8 \
        --grid model.config.num_hidden_layers=1,2 output_dir=runs/patch_depth train.epochs=2
"""

import argparse
import sys
from pathlib import Path

sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]  # see finetune.py

from accelerate import PartialState  # noqa: E402

from hfvision.cli import run_cli  # noqa: E402
from hfvision.errors import HfvisionError  # noqa: E402
from hfvision.evaluation.compare import markdown_table  # noqa: E402
from hfvision.sweep import run_sweep  # noqa: E402


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", type=Path)
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run (output_dir is the sweep dir)")
    parser.add_argument("--grid", action="append", default=[], help="dotted.key=v1,v2 (repeat for a cross product)")
    parser.add_argument("--name-template", default=None, help='run names, e.g. "p{patch_size}_d{num_hidden_layers}"')
    # options and key=value overrides in any order (plain parse_args stops taking overrides after the first option)
    args, unknown = parser.parse_known_intermixed_args(argv)
    if unknown:
        raise HfvisionError(f"sweep.py: unknown argument {unknown[0]!r}; options are --grid, --name-template, "
                            "and overrides are key=value")
    sweep_dir, rows = run_sweep(args.recipe, args.grid, args.overrides, args.name_template)
    if PartialState().is_main_process:
        print(markdown_table(rows))
        print(f"wrote {sweep_dir / 'comparison.md'} and {sweep_dir / 'comparison.csv'}")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
