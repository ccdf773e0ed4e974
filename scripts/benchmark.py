"""Speed of hfvision beside the usual way, and the size and speed of model families: one job of benchmarks/ each.

    python scripts/benchmark.py                  # the four comparisons, in one process (~15 min on 2 CPU cores)
    python scripts/benchmark.py --train-step --input-pipeline        # just these
    python scripts/benchmark.py --families [--recipe recipes/vit_scratch_cifar10.yaml --batch-size 128]
    python scripts/benchmark.py --tuning-modes --batch-size 8 --steps 2   # each tuning mode on a ViT-B/32 shape
    python scripts/benchmark.py --usual-way recipes/studies/cpu_budget_cifar10/vit.yaml   # time-to-accuracy peer
    python scripts/benchmark.py --onnx runs/quickstart  # torch vs onnxruntime fp32 and int8
    python scripts/benchmark.py --data-at-scale [--photos 2000]   # large photos: peak RSS, store build, second run
    python scripts/benchmark.py --data-at-scale --larger-than-ram 200000  # a store larger than RAM (~40 GB disk)

Results: benchmarks/<name>_<device>.json and .md (the README summarises them); targets live in the jobs, not in tests.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ lives beside hfvision, not installed

from benchmarks import (cpu_budget, data_at_scale, end_to_end, families, head_only, input_pipeline, onnx,  # noqa: E402
                        train_step, tuning_modes)
from benchmarks.results import CIFAR10, REPO, device_and_environment  # noqa: E402
from hfvision.cli import run_cli  # noqa: E402

COMPARISONS = {"train_step": train_step, "end_to_end": end_to_end, "head_only": head_only,
               "input_pipeline": input_pipeline}  # run all four when no job is named
INTEGER_OPTIONS = {  # flag: (default, help)
    "batch-size": (64, "--families, --tuning-modes: batch size"), "steps": (3, "timed training steps per measurement"),
    "rounds": (4, "alternated rounds per comparison (median reported)"), "train-step-batch": (128, None),
    "pipeline-images": (1024, None), "workers": (2, "DataLoader workers of the per-sample way"),
    "e2e-train-images": (10_000, None), "e2e-eval-images": (2_000, "validation and test images each"),
    "e2e-epochs": (1, None), "e2e-rounds": (1, None), "head-only-train-images": (250, None),
    "head-only-eval-images": (50, "validation and test images each"), "head-only-epochs": (10, None),
    "onnx-test-images": (1000, "--onnx: test images scored"),
    "photos": (2000, "--data-at-scale: generated 2000x1500 photos"),
    "baseline-photos": (100, "--data-at-scale: photos a round decoded by each 0.x baseline (one process, full size)"),
    "larger-than-ram": (0, "--data-at-scale: instead, this many 224 px photos (a store larger than RAM)")}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    jobs = {**COMPARISONS, "families": families, "tuning_modes": tuning_modes, "data_at_scale": data_at_scale}
    for name, job in jobs.items():
        parser.add_argument(f"--{name.replace('_', '-')}", action="store_true", help=job.__doc__.split(" (``")[0])
    parser.add_argument("--recipe", action="append", type=Path, help="--families: these recipes' models instead")
    for flag, (default, text) in INTEGER_OPTIONS.items():
        parser.add_argument(f"--{flag}", type=int, default=default, help=text)
    parser.add_argument("--head-only-model", type=Path, default=None, help="--head-only: this checkpoint (e.g. "
                        "../shared/models/vit-tiny-patch16-224) instead of a random ViT-B/32-shaped one")
    parser.add_argument("--cifar10", type=Path, default=CIFAR10, help="real CIFAR-10 (Parquet, img/label)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks")
    parser.add_argument("--photo-folder", type=Path, default=Path(tempfile.gettempdir()) / "hfvision-bench",
                        help="--data-at-scale: where the generated photos are kept between runs (never committed)")
    parser.add_argument("--usual-way", type=Path, metavar="RECIPE",
                        help="train the usual way for this scratch_vit recipe's time budget (time-to-accuracy peer)")
    parser.add_argument("--usual-way-dir", type=Path, default=REPO / "runs/cpu_budget_cifar10/usual_way",
                        help="--usual-way: where its metrics.json goes")
    parser.add_argument("--onnx", nargs="+", type=Path, metavar="MODEL",
                        help="torch vs onnxruntime fp32 and int8 for these trained models (run or model dirs)")
    parser.add_argument("--onnx-data", default=str(CIFAR10), help="--onnx: the dataset whose test split is scored")
    args = parser.parse_args(argv)
    args.argv = argv
    args.families = args.families or bool(args.recipe)  # --recipe names the models of the --families table
    return args


def main(argv: list[str]) -> None:
    args = parse(argv)
    device, env = device_and_environment()
    if args.usual_way or args.onnx or args.data_at_scale:  # a job of its own
        (cpu_budget if args.usual_way else onnx if args.onnx else data_at_scale).run(args, device, env)
        return
    if args.tuning_modes:
        tuning_modes.run(args, device, env)
    if args.families:
        families.run(args, device, env)
    chosen = [name for name in COMPARISONS if getattr(args, name)]
    for name in chosen or ([] if args.families or args.tuning_modes else list(COMPARISONS)):
        start = time.perf_counter()
        COMPARISONS[name].run(args, device, env)
        print(f"[{name}: {time.perf_counter() - start:.0f}s]", flush=True)


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
