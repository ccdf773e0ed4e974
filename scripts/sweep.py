"""Run a sweep: a recipe's `sweep:` grid/variants and --grid options, one run after another, then a table.

    python scripts/sweep.py recipes/studies/hw6_cifar100/vit_grid.yaml
    python scripts/sweep.py recipes/quickstart.yaml --grid model.config.patch_size=4,8 \\
        --grid model.config.num_hidden_layers=1,2 output_dir=runs/patch_depth train.epochs=2

Same as `hfvision sweep ...` (see `hfvision sweep --help`).
"""

import sys

from hfvision.cli import run_command

if __name__ == "__main__":
    run_command("sweep", sys.argv[1:])
