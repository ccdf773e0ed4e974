"""Compare finished runs: one Markdown + CSV table, curves, accuracy vs minutes and PFLOPs.

    python scripts/report.py runs/a runs/b [--out runs/comparison.md]

Same as `hfvision report ...` (see `hfvision report --help`).
"""

import sys

from hfvision.cli import run_command

if __name__ == "__main__":
    run_command("report", sys.argv[1:])
