"""Export a trained model to ONNX and validate it against torch on real images.

    hfvision export --model runs/quickstart --out runs/quickstart/onnx --data synthetic [--int8]
    hfvision export --model ../shared/models/vit-tiny-patch16-224 --out vit-ti-onnx --images photos/
    hfvision export --model runs/flowers --out runs/flowers/onnx --int8   # a run dir: its own held-out test split

Writes model.onnx (dynamic batch axis, opset 18), config.json and the image processor config (so the dir is
self-describing: `hfvision predict --model DIR` runs it through onnxruntime), and export.json: max |logit
difference| and top-1 agreement with torch, accuracy when the images have labels, latency of torch and
onnxruntime at batch 1 and 64. --int8 adds onnxruntime's dynamically quantised model.int8.onnx (weight MatMuls per channel; the patch embedding,
the head and the MatMuls after an MLP activation stay fp32), checked the same way.
"""

from pathlib import Path

from hfvision.export import describe, export_onnx


def add_arguments(parser):
    parser.add_argument("--model", required=True, help="run dir (uses best/), model dir or Hub id")
    parser.add_argument("--out", type=Path, required=True, help="the export dir")
    parser.add_argument("--images", nargs="+", default=None, help="image files/folders to validate on")
    parser.add_argument("--data", default=None, help="or a dataset to validate on: synthetic, a dir or a Hub id (default for a "
                        "run dir: the data it was trained on, split as the run split it)")
    parser.add_argument("--split", default="test", help="the split to validate on (default: test)")
    parser.add_argument("--max-samples", type=int, default=256, help="images to validate on (default: 256)")
    parser.add_argument("--int8", action="store_true", help="also write and check a dynamically quantised int8 model")


def run(args):
    report = export_onnx(args.model, args.out, images=args.images, data=args.data, split=args.split,
                         max_samples=args.max_samples, int8=args.int8)
    print(describe(report))
    print(f"written to {args.out} (export.json has the numbers)")
