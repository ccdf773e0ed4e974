"""Evaluate a saved model (model dir, run dir or Hub id) on a dataset split.

    python scripts/evaluate.py --model runs/quickstart --data synthetic [--split test] [--out eval.json]
    torchrun --nproc_per_node 2 scripts/evaluate.py --model runs/quickstart --data synthetic
"""

import argparse
import sys
from pathlib import Path

sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]  # see finetune.py

from accelerate import PartialState  # noqa: E402

from hfvision.cli import run_cli  # noqa: E402
from hfvision.pipeline import evaluate_saved_model  # noqa: E402
from hfvision.fileio import write_json_atomic  # noqa: E402


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model dir, run dir (uses best/) or Hub id")
    parser.add_argument("--data", required=True, help="synthetic, a local dataset dir or a Hub dataset id")
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-samples", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the metrics block")
    args = parser.parse_args(argv)
    block = evaluate_saved_model(args.model, args.data, args.split, args.batch_size, args.max_samples)
    if PartialState().is_main_process:
        result = {args.split: block, "model": args.model, "data": args.data}
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(args.out, result)
        print(block["classification_report"])
        print(f"{args.split} accuracy {block['accuracy']:.4f}  top-5 {block['top5_accuracy']:.4f}  "
              f"macro F1 {block['macro_f1']:.4f}  ({block['num_samples']} images)")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
