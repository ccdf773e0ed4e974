"""PCA of pooled features of a dataset split, one panel per model (e.g. ViT beside ResNet).

    python scripts/pca.py --model runs/vit --model runs/resnet --data ../shared/data/cifar10 --out pca.png
"""

import argparse
import json
import sys
from pathlib import Path

sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]  # see finetune.py

import torch  # noqa: E402

from hfvision.cli import run_cli  # noqa: E402
from hfvision.data.sources import load_eval_split  # noqa: E402
from hfvision.explain.api import pca_figure  # noqa: E402
from hfvision.models.factory import load_model_for_inference  # noqa: E402


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="model dir, run dir or Hub id; repeat to compare")
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-samples", type=int, default=2000)
    parser.add_argument("--out", type=Path, required=True, help="PNG file")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    split, label_names = load_eval_split(args.data, args.split, None, args.max_samples)
    models = {}
    for name in args.model:  # each model resizes the stored images to its own input size
        built = load_model_for_inference(name, device)
        models[Path(name).name or name] = (built.model, built.spec)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    variances = pca_figure(models, split, label_names, args.out)
    print(json.dumps({"explained_variance_ratio": variances}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
