"""Head-only tuning at 224 px with and without the feature cache (``--head-only``): 10 epochs of a ViT-B/32-shaped
backbone or ``--head-only-model``, without the cache, with it cold and with it warm."""

import os
import tempfile
from pathlib import Path

from safetensors.torch import load_file

from benchmarks.checkpoints import save_random_vit_b32
from benchmarks.results import met, write_results
from benchmarks.timing import fit_timed
from hfvision.evaluation.compare import markdown_table
from hfvision.recipe import load_recipe

RUNS = (("without cache", "off"), ("with cache (cold)", "on"), ("with cache (warm)", "on"))


def run_dir_name(name: str) -> str:
    return name.replace(" ", "_").strip("()")


def run(args, device, env: dict) -> dict:
    # The run dirs and the ViT-B/32 feature cache take gigabytes: deleted afterwards, and the cache variable restored.
    previous_cache = os.environ.get("HFVISION_CACHE")
    try:
        with tempfile.TemporaryDirectory(prefix="hfvision_head_only_") as work:
            return compare(args, device, env, Path(work))
    finally:
        if previous_cache is None:
            os.environ.pop("HFVISION_CACHE", None)
        else:
            os.environ["HFVISION_CACHE"] = previous_cache


def head_only_recipe(args, source: str, model_dir: Path, output_dir: Path, cache: str):
    return load_recipe(None, [
        f"output_dir={output_dir}", f"model.name={model_dir}", "model.tuning=head_only", f"data.dataset={source}",
        "data.image_size=224", f"data.max_train_samples={args.head_only_train_images}",
        f"data.max_eval_samples={args.head_only_eval_images}", "data.augment.random_crop_padding=0",
        "data.augment.horizontal_flip=false", f"train.epochs={args.head_only_epochs}", "train.batch_size=32",
        "train.learning_rate=0.001", "train.optimizer=adam", "train.weight_decay=0", "train.scheduler=constant",
        f"train.feature_cache={cache}", "train.report_to=none", "eval.batch_size=50", "eval.latency_batch_size=1",
        "eval.explain=false"])


def compare(args, device, env: dict, work: Path) -> dict:
    source = str(args.cifar10) if args.cifar10.is_dir() else "synthetic"
    model_dir = args.head_only_model or save_random_vit_b32(work / "vit_b32")
    os.environ["HFVISION_CACHE"] = str(work / "feature_cache")  # a cold cache: building it is part of the time
    runs = {}
    for name, cache in RUNS:
        metrics, wall = fit_timed(head_only_recipe(args, source, model_dir, work / run_dir_name(name), cache))
        build = metrics["feature_cache"]["seconds"] or 0.0
        runs[name] = {"wall_seconds": wall, "training_seconds": build + metrics["training"]["seconds"],
                      "cache_seconds": build, "val_accuracy": [h["val_accuracy"] for h in metrics["history"]],
                      "test_accuracy": metrics["test"]["accuracy"]}
    heads = {name: load_file(work / run_dir_name(name) / "last" / "model.safetensors")["classifier.weight"]
             for name in ("without cache", "with cache (cold)")}
    head_difference = (heads["without cache"] - heads["with cache (cold)"]).abs().max().item()
    plain, cold = runs["without cache"], runs["with cache (cold)"]
    speedup = plain["training_seconds"] / cold["training_seconds"]
    val_gap = 100 * abs(plain["val_accuracy"][-1] - cold["val_accuracy"][-1])
    rows = [{"run": name, "training s": f"{r['training_seconds']:.1f}", "of which cache s": f"{r['cache_seconds']:.1f}",
             "wall s": f"{r['wall_seconds']:.1f}",
             "training speed-up": f"{plain['training_seconds'] / r['training_seconds']:.1f}x",
             "final val accuracy": f"{100 * r['val_accuracy'][-1]:.2f}%",
             "test accuracy": f"{100 * r['test_accuracy']:.2f}%"} for name, r in runs.items()]
    write_results(args, device, env, "head_only", "Head-only tuning with and without the feature cache",
                  notes(args, source, speedup, val_gap, head_difference), markdown_table(rows, list(rows[0]), str),
                  {"runs": runs, "speedup": speedup, "val_accuracy_gap_points": val_gap,
                   "head_max_abs_difference": head_difference, "source": source})
    return runs


def notes(args, source: str, speedup: float, val_gap: float, head_difference: float) -> list[str]:
    backbone = (f"`{args.head_only_model}` at 224 px" if args.head_only_model else
                "ViT-B/32-shaped `ViTForImageClassification` (width 768, depth 12, 12 heads, patch 32) at 224 px, "
                "random weights saved locally (a stand-in for a Hub checkpoint)")
    return [f"{backbone}; head-only; {source}: "
            f"{args.head_only_train_images} training images, {args.head_only_eval_images} validation, "
            f"{args.head_only_eval_images} test (32 px, resized per batch); {args.head_only_epochs} epochs, batch 32, "
            "Adam 1e-3, constant LR, no augmentation, fp32.",
            "Training = building the cache (cold: the frozen backbone over train and validation once; warm: reading "
            "it) + the epochs with validation after each. Wall = the whole `fit` (loading, training, test evaluation "
            "of best/ through the real model, FLOPs and latency profile, run files).",
            f"Target: >= 8x less training time with the cache (cold) than without: {met(speedup, 8)}; validation "
            f"accuracy equal within 0.2 points: {val_gap:.2f} points ({'met' if val_gap <= 0.2 else 'MISSED'}); "
            f"largest difference between the two trained heads: {head_difference:.1e}."]
