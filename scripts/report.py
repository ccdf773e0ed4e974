"""Compare finished runs: one Markdown + CSV table and overlaid curves.

    python scripts/report.py runs/a runs/b [--out runs/comparison.md]
"""

import argparse
import sys
from pathlib import Path

sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]  # see finetune.py

from hfvision.cli import run_cli  # noqa: E402
from hfvision.evaluation.compare import markdown_table, write_comparison  # noqa: E402


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (each with metrics.json)")
    parser.add_argument("--out", type=Path, default=Path("comparison.md"), help="Markdown file; .csv and _curves.png go beside it")
    args = parser.parse_args(argv)
    rows = write_comparison(args.runs, args.out)
    print(markdown_table(rows))
    print(f"wrote {args.out.with_suffix('.md')}, {args.out.with_suffix('.csv')}")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
