"""Push a finished run's best/ model (with its model card) to the Hugging Face Hub.

    python scripts/push_to_hub.py --run runs/quickstart --repo-id your-name/scratch-vit-shapes [--private]
"""

import argparse
import sys
from pathlib import Path

sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]  # see finetune.py

from hfvision.cli import run_cli  # noqa: E402
from hfvision.hub import push_to_hub, write_model_card  # noqa: E402


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="run dir (with best/ and metrics.json)")
    parser.add_argument("--repo-id", required=True, help="USER/NAME on the Hub")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--token", default=None, help="defaults to HF_TOKEN or the cached login")
    args = parser.parse_args(argv)
    write_model_card(args.run, args.repo_id)  # the card names the repo it lives in
    print(push_to_hub(args.run, args.repo_id, private=args.private, token=args.token))


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
