"""Compare finished runs: one Markdown + CSV table, overlaid curves, and accuracy against minutes and PFLOPs.

    hfvision report runs/a runs/b [--out runs/comparison.md]
"""

from pathlib import Path

from hfvision.evaluation.compare import markdown_table, write_run_comparison


def add_arguments(parser):
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (each with metrics.json)")
    parser.add_argument("--out", type=Path, default=Path("comparison.md"),
                        help="Markdown file; .csv, _curves.png and _accuracy_vs_time.png go beside it")


def run(args):
    rows = write_run_comparison(args.runs, args.out)
    print(markdown_table(rows))
    print(f"wrote {args.out.with_suffix('.md')}, {args.out.with_suffix('.csv')}")
