"""Push a finished run's best/ model (with its model card) to the Hugging Face Hub.

    hfvision push --run runs/quickstart --repo-id your-name/scratch-vit-shapes [--private]
"""

from pathlib import Path

from hfvision.hub import push_to_hub, write_model_card


def add_arguments(parser):
    parser.add_argument("--run", type=Path, required=True, help="run dir (with best/ and metrics.json)")
    parser.add_argument("--repo-id", required=True, help="USER/NAME on the Hub")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--token", default=None, help="defaults to HF_TOKEN or the cached login")


def run(args):
    write_model_card(args.run, args.repo_id)  # the card names the repo it lives in
    print(push_to_hub(args.run, args.repo_id, private=args.private, token=args.token))
