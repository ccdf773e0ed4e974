"""The known-answer check for explanations: on synthetic shapes, how often the heat map peaks in the shape.

    hfvision localization --model runs/quickstart [--method gradcam|rollout] [--count 200] [--plain-norm-gradients]
"""

import json

from hfvision.explain.api import METHODS, synthetic_localization
from hfvision.models.factory import load_model_for_inference


def add_arguments(parser):
    parser.add_argument("--model", required=True, help="a model trained on the synthetic dataset (run dir or model dir)")
    parser.add_argument("--method", choices=METHODS, default="gradcam")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--plain-norm-gradients", action="store_true",
                        help="Grad-CAM without the LN rule (gradients through the norms' scale), for comparison")


def run(args):
    built = load_model_for_inference(args.model)
    result = synthetic_localization(built.model, built.spec, args.method, args.count,
                                    constant_norm_scale=not args.plain_norm_gradients)
    print(json.dumps({"model": args.model, "norm_rule": not args.plain_norm_gradients, **result}))
