"""One epoch on real CIFAR-10, hfvision.pipeline.fit vs the usual way (``--end-to-end``): train images/s at equal
test accuracy; the usual way as transformers' no_trainer example."""

import statistics
import tempfile
import time
from pathlib import Path

from accelerate.utils import set_seed
from transformers import AutoModelForImageClassification

from benchmarks.checkpoints import save_random_vit
from benchmarks.results import CIFAR10_MEAN, CIFAR10_STD, met, write_results
from benchmarks.timing import fit_timed
from benchmarks.usual_way import per_sample_loaders, per_sample_transforms, train_usual_way
from hfvision.accelerator import make_accelerator
from hfvision.data.sources import load_raw, split_dataset
from hfvision.evaluation.compare import markdown_table
from hfvision.recipe import load_recipe

SHAPE = dict(hidden_size=192, num_hidden_layers=6, num_attention_heads=3, intermediate_size=768, layer_norm_eps=1e-6)
MEDIAN_KEYS = ("train_images_per_second", "test_accuracy", "val_accuracy", "wall_seconds")


def settings_of(args) -> dict:
    return {"seed": 42, "epochs": args.e2e_epochs, "batch_size": 128, "eval_batch_size": 500,
            "learning_rate": 1e-3, "weight_decay": 0.05}


def hfvision_recipe(args, settings: dict, model_dir: Path, output_dir: Path):
    """The recipe equivalent to the usual way's settings."""
    return load_recipe(None, [
        f"output_dir={output_dir}", f"seed={settings['seed']}", f"model.name={model_dir}",
        f"data.dataset={args.cifar10}", f"data.max_train_samples={args.e2e_train_images}",
        f"data.max_eval_samples={args.e2e_eval_images}", f"data.mean={list(CIFAR10_MEAN)}",
        f"data.std={list(CIFAR10_STD)}", "data.augment.random_crop_padding=4", "data.augment.horizontal_flip=true",
        f"train.epochs={settings['epochs']}", f"train.batch_size={settings['batch_size']}",
        f"train.learning_rate={settings['learning_rate']}", f"train.weight_decay={settings['weight_decay']}",
        "train.optimizer=adamw", "train.scheduler=cosine", "train.warmup_epochs=0", "train.max_grad_norm=null",
        "train.report_to=none", f"eval.batch_size={settings['eval_batch_size']}", "eval.latency_batch_size=8",
        "eval.explain=false"])


def usual_way_run(model_dir: Path, splits, image_column: str, label_column: str, settings: dict, workers: int) -> dict:
    """The usual way on the same model and settings: train images/s, epoch seconds, accuracies, wall seconds."""
    start = time.perf_counter()
    accelerator = make_accelerator()  # Accelerator(), with the singletons of the previous run in this process reset
    set_seed(settings["seed"])
    model = AutoModelForImageClassification.from_pretrained(model_dir)
    transforms = per_sample_transforms(32, CIFAR10_MEAN, CIFAR10_STD, crop_padding=4, flip=True)
    loaders = per_sample_loaders(splits, image_column, label_column, workers, settings["batch_size"],
                                 settings["eval_batch_size"], transforms)
    trained = train_usual_way(model, loaders, accelerator, learning_rate=settings["learning_rate"],
                              weight_decay=settings["weight_decay"], epochs=settings["epochs"])
    images = len(splits["train"]) * settings["epochs"]
    return {"train_images_per_second": images / sum(trained["epoch_seconds"]),
            "epoch_seconds": trained["epoch_seconds"], "val_accuracy": trained["history"][-1]["val_accuracy"],
            "test_accuracy": trained["test"]["accuracy"], "wall_seconds": time.perf_counter() - start}


def hfvision_run(recipe, train_images: int) -> dict:
    metrics, wall = fit_timed(recipe)
    seconds = [h["epoch_seconds"] for h in metrics["history"]]
    return {"train_images_per_second": train_images * len(seconds) / sum(seconds), "epoch_seconds": seconds,
            "val_accuracy": metrics["history"][-1]["val_accuracy"], "test_accuracy": metrics["test"]["accuracy"],
            "wall_seconds": wall}


def run(args, device, env: dict) -> dict | None:
    if not args.cifar10.is_dir():
        print(f"[end_to_end: skipped, no CIFAR-10 at {args.cifar10}]", flush=True)
        return None
    with tempfile.TemporaryDirectory(prefix="hfvision_e2e_") as work:  # models and run dirs: deleted afterwards
        return compare(args, device, env, Path(work))


def compare(args, device, env: dict, work: Path) -> dict:
    model_dir = save_random_vit(work / "vit", 32, 4, CIFAR10_MEAN, CIFAR10_STD, **SHAPE)
    settings = settings_of(args)
    data = hfvision_recipe(args, settings, model_dir, work / "hfvision_0").data
    splits, image_column, label_column, _ = split_dataset(load_raw(str(args.cifar10)), data, settings["seed"])
    runs = {"hfvision": [], "usual way": []}
    for run_index in range(args.e2e_rounds):  # A B A B
        runs["usual way"].append(usual_way_run(model_dir, splits, image_column, label_column, settings, args.workers))
        recipe = hfvision_recipe(args, settings, model_dir, work / f"hfvision_{run_index}")
        runs["hfvision"].append(hfvision_run(recipe, len(splits["train"])))
    median = {name: {key: statistics.median(r[key] for r in rs) for key in MEDIAN_KEYS} for name, rs in runs.items()}
    ratio = median["hfvision"]["train_images_per_second"] / median["usual way"]["train_images_per_second"]
    rows = [{"pipeline": name, "train images/s": f"{m['train_images_per_second']:.1f}",
             "val accuracy": f"{100 * m['val_accuracy']:.2f}%", "test accuracy": f"{100 * m['test_accuracy']:.2f}%",
             "wall s": f"{m['wall_seconds']:.0f}"} for name, m in median.items()]
    table = markdown_table(rows, list(rows[0]), str) + f"\nhfvision / usual way, train images/s: **{ratio:.2f}x**\n"
    write_results(args, device, env, "end_to_end", "End to end on CIFAR-10: hfvision vs the usual way",
                  notes(args, settings, splits, ratio), table,
                  {"runs": runs, "median": median, "ratio": ratio, "settings": settings})
    return median


def notes(args, settings: dict, splits, ratio: float) -> list[str]:
    return [f"Real CIFAR-10 ({args.cifar10}): {len(splits['train'])} training images (seeded stratified subset), "
            f"{len(splits['validation'])} validation, {len(splits['test'])} test; {settings['epochs']} epoch(s), "
            f"batch {settings['batch_size']}, AdamW lr {settings['learning_rate']} wd {settings['weight_decay']} "
            "(decay on matrices only, both), cosine per step, no warmup, no clipping, fp32; random crop (pad 4) + "
            f"flip; {args.e2e_rounds} round(s) of usual way then hfvision, median.",
            "Model: transformers `ViTForImageClassification`, patch 4, width 192, depth 6, 3 heads, MLP 768, the "
            "same random initial weights saved to a local dir that both load.",
            f"Usual way: as transformers' `run_image_classification_no_trainer.py` (per-sample torchvision transforms "
            f"through `datasets.with_transform`, `DataLoader` with {args.workers} workers, plain Accelerate loop, "
            "validation each epoch); hfvision: `hfvision.pipeline.fit` on the equivalent recipe (images decoded once, "
            "batched augmentation).",
            "Train images/s: training images over the epochs' training-loop seconds. Wall: the whole call; hfvision's "
            "also decodes the splits and writes the run dir (best/, last/, checkpoint/, FLOPs and latency profile, "
            "plots, report, model card).",
            f"Target: hfvision >= 1.15x the usual way's train images/s at equal test accuracy: {met(ratio, 1.15)}."]
