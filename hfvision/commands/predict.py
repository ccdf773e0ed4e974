"""Top-k predictions of a trained model for image files, folders (recursively) or a dataset split.

    hfvision predict --model runs/quickstart photos/ more.jpg --out predictions.csv
    hfvision predict --model runs/quickstart --data synthetic --split test --out predictions.jsonl
    torchrun --nproc_per_node 2 -m hfvision predict --model runs/quickstart photos/ --out predictions.csv

--model: a run dir (its best/), a model dir (transformers or timm layout) or a Hub id. Unreadable files are
named and skipped. The output has one row per image: file, label, score and the top-k labels with their scores.
"""

from pathlib import Path

from accelerate import PartialState

from hfvision.predict import predict


def add_arguments(parser):
    parser.add_argument("inputs", nargs="*", help="image files and folders (searched recursively)")
    parser.add_argument("--model", required=True, help="run dir (uses best/), model dir or Hub id")
    parser.add_argument("--data", default=None, help="predict a dataset split instead: synthetic, a dir or a Hub id")
    parser.add_argument("--split", default="test", help="with --data (default: test)")
    parser.add_argument("--max-samples", type=int, default=None, help="with --data: the first N images")
    parser.add_argument("--out", type=Path, default=None, help="predictions file: .csv or .jsonl")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)


def run(args):
    predictions = predict(args.model, args.inputs or None, data=args.data, split=args.split, out=args.out,
                          top_k=args.top_k, batch_size=args.batch_size, max_samples=args.max_samples)
    if PartialState().is_main_process:
        if args.out is None:
            for row in predictions.rows:
                print(f"{row['file']}\t{row['label']}\t{row['score']:.4f}")
        print(predictions.summary() + (f"; written to {args.out}" if args.out else ""))
