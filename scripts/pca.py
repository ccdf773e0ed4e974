"""PCA of pooled features of a dataset split, one panel per model.

    python scripts/pca.py --model runs/vit --model runs/resnet --data ../shared/data/cifar10 --out pca.png

Same as `hfvision pca ...` (see `hfvision pca --help`).
"""

import sys

from hfvision.cli import run_command

if __name__ == "__main__":
    run_command("pca", sys.argv[1:])
