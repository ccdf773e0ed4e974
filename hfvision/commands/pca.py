"""PCA of pooled features of a dataset split, one panel per model (e.g. ViT beside ResNet).

    hfvision pca --model runs/vit --model runs/resnet --data ../shared/data/cifar10 --out pca.png
"""

import json
from pathlib import Path

import torch

from hfvision.data.sources import load_eval_split
from hfvision.explain.api import pca_figure
from hfvision.models.factory import load_model_for_inference


def add_arguments(parser):
    parser.add_argument("--model", action="append", required=True, help="model dir, run dir or Hub id; repeat to compare")
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-samples", type=int, default=2000)
    parser.add_argument("--out", type=Path, required=True, help="PNG file")


def run(args):
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
