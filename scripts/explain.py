"""Explain predictions with Grad-CAM (or attention rollout) heat maps over the images.

    python scripts/explain.py --model runs/quickstart --image cat.png --out cam.png
    python scripts/explain.py --model runs/vit --model runs/resnet --data synthetic --per-class --out grid.png
"""

import argparse
import sys
from pathlib import Path

sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]  # see finetune.py

import torch  # noqa: E402

from hfvision.cli import run_cli  # noqa: E402
from hfvision.data.sources import load_eval_split  # noqa: E402
from hfvision.errors import HfvisionError  # noqa: E402
from hfvision.explain.api import METHODS, compare_heatmaps, first_index_per_class, load_image  # noqa: E402
from hfvision.models.factory import load_model_for_inference  # noqa: E402


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="model dir, run dir or Hub id; repeat to compare")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", action="append", type=Path, help="image file(s)")
    source.add_argument("--data", help="synthetic, a local dataset dir or a Hub dataset id")
    parser.add_argument("--split", default="test")
    parser.add_argument("--per-class", action="store_true", help="one image per class (with --data)")
    parser.add_argument("--count", type=int, default=8, help="images from --data without --per-class")
    parser.add_argument("--method", choices=METHODS, default="gradcam")
    parser.add_argument("--out", type=Path, required=True, help="PNG file")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    built = {name: load_model_for_inference(name, device) for name in args.model}
    first = next(iter(built.values()))
    true_labels = None
    if args.image:
        images = torch.cat([load_image(path, first.normalization.size) for path in args.image])
    else:
        split, label_names = load_eval_split(args.data, args.split, first.normalization.size)
        indices = first_index_per_class(split.labels, len(label_names)) if args.per_class else list(range(args.count))
        if not indices or max(indices) >= len(split):
            raise HfvisionError(f"--count: the split has {len(split)} images")
        images = split.pixels[indices]
        true_labels = [label_names[int(split.labels[i])] for i in indices]
    models = {Path(name).name or name: (b.model, b.normalization) for name, b in built.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    compare_heatmaps(models, images, args.out, true_labels=true_labels, method=args.method)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
