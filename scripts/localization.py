"""The known-answer check for explanations on synthetic shapes.

    python scripts/localization.py --model runs/quickstart [--method gradcam|rollout] [--count 200]

Same as `hfvision localization ...` (see `hfvision localization --help`).
"""

import sys

from hfvision.cli import run_command

if __name__ == "__main__":
    run_command("localization", sys.argv[1:])
