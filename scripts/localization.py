"""The known-answer check for explanations: on synthetic shapes, how often the heat map peaks in the shape.

    python scripts/localization.py --model runs/quickstart [--method gradcam|rollout] [--count 200]
                                   [--plain-norm-gradients]
"""

import argparse
import json
import sys
from pathlib import Path

sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]  # see finetune.py

from hfvision.cli import run_cli  # noqa: E402
from hfvision.explain.api import METHODS, synthetic_localization  # noqa: E402
from hfvision.models.factory import load_model_for_inference  # noqa: E402


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a model trained on the synthetic dataset (run dir or model dir)")
    parser.add_argument("--method", choices=METHODS, default="gradcam")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--plain-norm-gradients", action="store_true",
                        help="Grad-CAM without the LN rule (gradients through the norms' scale), for comparison")
    args = parser.parse_args(argv)
    built = load_model_for_inference(args.model)
    result = synthetic_localization(built.model, built.spec, args.method, args.count,
                                    constant_norm_scale=not args.plain_norm_gradients)
    print(json.dumps({"model": args.model, "norm_rule": not args.plain_norm_gradients, **result}))


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
