"""How faithful is each heat map to what the model uses? Deletion/insertion AUC and the model-randomisation check
for Grad-CAM (LN rule and plain), attention rollout, Score-CAM, occlusion and a random baseline, on a fixed,
seeded set of test images; one table and one overlay figure.

    hfvision faithfulness --model runs/vit_tiny_cifar10 --count 16 --out runs/vit_tiny_cifar10/faithfulness
    hfvision faithfulness --model runs/quickstart --data synthetic --count 32 --out faith/
    hfvision faithfulness --model runs/vit_tiny_cifar10 --count 64 --road --out faith/   # + ROAD MoRF/LeRF

Without --data the model must be a run dir: its recipe's own test split is used (a photo folder's held-out part).
Writes OUT/faithfulness.md, OUT/faithfulness.json and OUT/overlays.png.
"""

from pathlib import Path

import torch

from hfvision.data.sources import load_eval_split, load_run_split
from hfvision.errors import HfvisionError
from hfvision.explain.api import (
    FAITHFULNESS_ROWS,
    faithfulness_markdown,
    faithfulness_overlays,
    measure_faithfulness,
)
from hfvision.fileio import write_json_atomic
from hfvision.models.factory import load_model_for_inference


def add_arguments(parser):
    parser.add_argument("--model", required=True, help="run dir (uses best/), model dir or Hub id")
    parser.add_argument("--data", help="synthetic, a local dataset dir or a Hub dataset id (default: the run's recipe)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--count", type=int, default=16, help="test images, drawn with --seed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=16, help="deletion/insertion steps")
    parser.add_argument("--batch-size", type=int, default=64, help="forward passes at a time")
    parser.add_argument("--methods", default=",".join(FAITHFULNESS_ROWS),
                        help=f"comma-separated subset of {', '.join(FAITHFULNESS_ROWS)}")
    parser.add_argument("--road", action="store_true",
                        help="also ROAD's MoRF/LeRF AUC (noisy linear imputation of removed pixels; slower)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")


def _images(args, spec):
    if args.data:
        return load_eval_split(args.data, args.split, spec.image_size, args.count, seed=args.seed,
                               crop_pct=spec.crop_pct)
    return load_run_split(args.model, args.split, spec.image_size, args.count, args.seed, spec.crop_pct)


def run(args):
    rows = tuple(args.methods.split(","))
    unknown = [row for row in rows if row not in FAITHFULNESS_ROWS]
    if unknown:
        raise HfvisionError(f"--methods: {', '.join(unknown)} not among {', '.join(FAITHFULNESS_ROWS)}")
    if args.count < 2 or args.steps < 1:
        raise HfvisionError("--count: at least 2 images and --steps at least 1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    built = load_model_for_inference(args.model, device)
    split, label_names = _images(args, built.spec)
    result = measure_faithfulness(built.model, built.spec, split.pixels[:], split.labels, rows, args.steps, args.seed,
                                  args.batch_size, with_road=args.road)
    args.out.mkdir(parents=True, exist_ok=True)
    table = faithfulness_markdown(result)
    header = (f"{result['images']} {args.split} images (seed {args.seed}; the model is right on "
              f"{result['accuracy_on_images']:.0%} of them), {args.steps} deletion/insertion steps, "
              f"input {built.spec.image_size} px\n\n")
    (args.out / "faithfulness.md").write_text(header + table)
    write_json_atomic(args.out / "faithfulness.json", {
        "model": args.model, "data": args.data, "split": args.split, "images": result["images"],
        "seed": args.seed, "steps": args.steps, "road": args.road, "image_size": built.spec.image_size,
        "accuracy_on_images": result["accuracy_on_images"], "rows": result["rows"], "skipped": result["skipped"]})
    faithfulness_overlays(result, built.spec, label_names, args.out / "overlays.png")
    print(header + table + f"wrote {args.out}/faithfulness.md, faithfulness.json, overlays.png")
