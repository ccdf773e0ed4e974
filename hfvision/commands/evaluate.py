"""Evaluate a saved model (model dir, run dir or Hub id) on a dataset split.

    hfvision evaluate --model runs/quickstart --data synthetic [--split test] [--out eval.json]
    torchrun --nproc_per_node 2 -m hfvision evaluate --model runs/quickstart --data synthetic
"""

from pathlib import Path

from accelerate import PartialState

from hfvision.fileio import write_json_atomic
from hfvision.pipeline import evaluate_saved_model


def add_arguments(parser):
    parser.add_argument("--model", required=True, help="model dir, run dir (uses best/) or Hub id")
    parser.add_argument("--data", required=True, help="synthetic, a local dataset dir or a Hub dataset id")
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-samples", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the metrics block")


def run(args):
    block = evaluate_saved_model(args.model, args.data, args.split, args.batch_size, args.max_samples)
    if PartialState().is_main_process:
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(args.out, {args.split: block, "model": args.model, "data": args.data})
        print(block["classification_report"])
        print(f"{args.split} accuracy {block['accuracy']:.4f}  top-5 {block['top5_accuracy']:.4f}  "
              f"macro F1 {block['macro_f1']:.4f}  ({block['num_samples']} images)")
