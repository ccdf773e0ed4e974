"""Train (fine-tune or from scratch) and evaluate a model from a recipe.

    python scripts/finetune.py recipes/quickstart.yaml [key=value ...]
    accelerate launch scripts/finetune.py recipes/swin_tiny.yaml train.epochs=1
"""

import sys
from pathlib import Path

# scripts/evaluate.py would shadow the `evaluate` package for every script here: keep this folder off the path.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from hfvision.cli import run_cli  # noqa: E402
from hfvision.recipe import load_recipe  # noqa: E402
from hfvision.pipeline import fit  # noqa: E402


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return
    recipe = load_recipe(argv[0], argv[1:])
    fit(recipe)


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
