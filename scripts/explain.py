"""Explain predictions with Grad-CAM (or attention rollout) heat maps over the images.

    python scripts/explain.py --model runs/quickstart --image cat.png --out cam.png
    python scripts/explain.py --model runs/vit --model runs/resnet --data synthetic --per-class --out grid.png

Same as `hfvision explain ...` (see `hfvision explain --help`).
"""

import sys

from hfvision.cli import run_command

if __name__ == "__main__":
    run_command("explain", sys.argv[1:])
