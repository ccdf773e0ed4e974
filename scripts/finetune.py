"""Train (fine-tune or from scratch) and evaluate a model from a recipe; the path for `accelerate launch`:

    python scripts/finetune.py recipes/quickstart.yaml [key=value ...]
    accelerate launch scripts/finetune.py recipes/swin_tiny.yaml train.epochs=1

Same as `hfvision train ...` (see `hfvision train --help`).
"""

import sys

from hfvision.cli import run_command

if __name__ == "__main__":
    run_command("train", sys.argv[1:])
