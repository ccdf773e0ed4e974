"""Train (fine-tune or from scratch) and evaluate a model from a recipe.

    hfvision train recipes/quickstart.yaml [key=value ...]
    accelerate launch scripts/finetune.py recipes/swin_tiny.yaml train.epochs=1
"""

from hfvision.pipeline import fit
from hfvision.recipe import load_recipe


def add_arguments(parser):
    parser.add_argument("recipe", help="YAML recipe")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.epochs=3")


def run(args):
    fit(load_recipe(args.recipe, args.overrides))
