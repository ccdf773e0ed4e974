"""A finished run's files: ``metrics.json`` (with profile, timing, environment), plots and ``report.md``."""

from __future__ import annotations

from pathlib import Path

import yaml

from hfvision.evaluation.environment import environment
from hfvision.evaluation.plots import plot_confusion_matrix, plot_curves
from hfvision.evaluation.profile import inference_latency, model_profile
from hfvision.fileio import write_json_atomic


def _timing(model, image_size: int, history: list[dict], latency_batch_size: int) -> dict:
    timing = inference_latency(model, image_size, latency_batch_size)
    if history:
        seconds = [h["epoch_seconds"] for h in history]
        timing["train_seconds_per_epoch"] = sum(seconds) / len(seconds)
        timing["train_images_per_second"] = sum(h["train_images_per_second"] for h in history) / len(history)
        timing["total_train_seconds"] = sum(seconds)
    return timing


def write_run_artifacts(run_dir: Path, recipe, metrics: dict, model, image_size: int, trainable: int) -> dict:
    """Complete ``metrics`` with model cost and timing, write every run file, return the completed metrics."""
    profile = model_profile(model, image_size)
    profile.update(name=recipe.model.name, tuning=recipe.model.tuning, model_type=model.config.model_type,
                   trainable_parameters=trainable, trainable_share=trainable / profile["parameters"])
    _add_training_flops(metrics, profile["flops_per_image"])
    metrics = {**metrics, "model": profile,
               "timing": {**_timing(model, image_size, metrics["history"], recipe.eval.latency_batch_size),
                          "data_seconds": metrics.get("data", {}).get("seconds")},
               "environment": environment(), "seed": recipe.seed}
    write_json_atomic(run_dir / "metrics.json", metrics)
    label_names = list(metrics["test"]["per_class"])
    if metrics["history"]:
        plot_curves({recipe.output_dir: metrics["history"]}, run_dir / "curves.png")
    plot_confusion_matrix(metrics["test"]["confusion_matrix"], label_names, run_dir / "confusion_matrix.png")
    (run_dir / "report.md").write_text(render_report(recipe, metrics))
    return metrics


# One training image costs about three forward passes (forward, and a backward of twice the forward's cost), the
# usual estimate (Kaplan et al. 2020); it overstates frozen-backbone tuning, whose backward stops at the head.
TRAIN_FLOPS_PER_FORWARD = 3


def _add_training_flops(metrics: dict, flops_per_image: int) -> None:
    """Training FLOPs so far after each epoch (``history[i]['train_flops']``) and in all (``training``)."""
    per_image = TRAIN_FLOPS_PER_FORWARD * flops_per_image
    for record in metrics["history"]:
        if "images_seen" in record:
            record["train_flops"] = per_image * record["images_seen"]
    if "training" in metrics:
        metrics["training"]["train_flops"] = per_image * metrics["training"]["images_seen"]


def _fmt_int(value) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def render_report(recipe, metrics: dict) -> str:
    test, model, timing, env = metrics["test"], metrics["model"], metrics["timing"], metrics["environment"]
    lines = [f"# Run report: {recipe.model.name} on {recipe.data.dataset}", ""]
    lines += ["## Results (test split, best checkpoint)", "", "| metric | value |", "| --- | --- |"]
    for key in ("accuracy", "top1_error", "top5_accuracy", "macro_precision", "macro_recall", "macro_f1",
                "weighted_f1", "loss", "num_samples"):
        if key in test:
            value = test[key]
            lines.append(f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |")
    lines += [f"| best epoch (by val accuracy) | {metrics['best_epoch']} |", ""]
    lines += ["## Per class", "", "| class | precision | recall | F1 | support |", "| --- | --- | --- | --- | --- |"]
    for name, row in test["per_class"].items():
        lines.append(f"| {name} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} | {row['support']} |")
    lines += ["", "![confusion matrix](confusion_matrix.png)", ""]
    if metrics["history"]:
        lines += ["## Training", "", "| epoch | train loss | train acc | val loss | val acc | lr | seconds |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for h in metrics["history"]:
            lines.append(f"| {h['epoch']} | {h['train_loss']:.4f} | {h['train_accuracy']:.4f} | {h['val_loss']:.4f} "
                         f"| {h['val_accuracy']:.4f} | {h['learning_rate']:.2e} | {h['epoch_seconds']:.1f} |")
        lines += ["", "![curves](curves.png)", ""]
    lines += ["## Model and cost", "", "| quantity | value |", "| --- | --- |",
              f"| model type | {model['model_type']} |", f"| tuning | {model['tuning']} |",
              f"| parameters | {_fmt_int(model['parameters'])} |",
              (f"| trainable parameters | {_fmt_int(model['trainable_parameters'])} "
               f"({100 * model['trainable_share']:.2f}% of the saved model's) |"),
              f"| FLOPs per image | {_fmt_int(model['flops_per_image'])} |",
              f"| MACs per image | {_fmt_int(model['macs_per_image'])} |",
              f"| input size | {model['image_size']} |",
              f"| inference ms per batch of {timing['latency_batch_size']} ({timing['precision']}, {timing['device']}) "
              f"| {timing['inference_ms_per_batch']:.2f} |",
              f"| inference images/s | {timing['images_per_second']:.1f} |"]
    if "train_seconds_per_epoch" in timing:
        lines += [f"| train seconds per epoch | {timing['train_seconds_per_epoch']:.1f} |",
                  f"| train images/s | {timing['train_images_per_second']:.1f} |"]
    lines += ["", "## Environment", "", f"- Python {env['python']}, " +
              ", ".join(f"{k} {v}" for k, v in env["packages"].items()),
              f"- CPU: {env['cpu']} x {env['cpu_count']}; GPU: {env['gpu'] or 'none'}; git: {env['git_sha']}", "",
              "## Recipe", "", "```yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False).rstrip(), "```", "",
              "## Classification report", "", "```", test["classification_report"], "```", ""]
    return "\n".join(lines)
