"""Push a finished run's best/ model (with its model card) to the Hugging Face Hub.

    python scripts/push_to_hub.py --run runs/quickstart --repo-id your-name/scratch-vit-shapes [--private]

Same as `hfvision push ...` (see `hfvision push --help`).
"""

import sys

from hfvision.cli import run_command

if __name__ == "__main__":
    run_command("push", sys.argv[1:])
