"""Explain predictions with Grad-CAM (or attention rollout) heat maps over the images.

    hfvision explain --model runs/quickstart --image cat.png --out cam.png
    hfvision explain --model runs/vit --model runs/resnet --data synthetic --per-class --out grid.png
"""

from pathlib import Path

import torch

from hfvision.data.sources import load_eval_split
from hfvision.errors import HfvisionError
from hfvision.explain.api import METHODS, compare_heatmaps, first_index_per_class, load_image
from hfvision.models.factory import load_model_for_inference


def add_arguments(parser):
    parser.add_argument("--model", action="append", required=True, help="model dir, run dir or Hub id; repeat to compare")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", action="append", type=Path, help="image file(s)")
    source.add_argument("--data", help="synthetic, a local dataset dir or a Hub dataset id")
    parser.add_argument("--split", default="test")
    parser.add_argument("--per-class", action="store_true", help="one image per class (with --data)")
    parser.add_argument("--count", type=int, default=8, help="images from --data without --per-class")
    parser.add_argument("--method", choices=METHODS, default="gradcam")
    parser.add_argument("--out", type=Path, required=True, help="PNG file")


def run(args):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    built = {name: load_model_for_inference(name, device) for name in args.model}
    first = next(iter(built.values()))
    true_labels = None
    if args.image:
        images = torch.cat([load_image(path, first.spec.image_size, first.spec.crop_pct) for path in args.image])
    else:
        split, label_names = load_eval_split(args.data, args.split, first.spec.image_size)
        indices = first_index_per_class(split.labels, len(label_names)) if args.per_class else list(range(args.count))
        if not indices or max(indices) >= len(split):
            raise HfvisionError(f"--count: the split has {len(split)} images")
        images = split.pixels[indices]
        true_labels = [label_names[int(split.labels[i])] for i in indices]
    models = {Path(name).name or name: (b.model, b.spec) for name, b in built.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    compare_heatmaps(models, images, args.out, true_labels=true_labels, method=args.method)
    print(f"wrote {args.out}")
