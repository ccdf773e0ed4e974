"""Headless matplotlib figures: training curves and the confusion matrix (counts and row-normalised)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure


def plot_curves(histories: dict[str, list[dict]], path) -> None:
    """Loss and accuracy per epoch, train (dashed) and validation (solid); one colour per run."""
    fig = Figure(figsize=(11, 4))
    loss_ax, acc_ax = fig.subplots(1, 2)
    for index, (name, history) in enumerate(histories.items()):
        colour = f"C{index}"
        epochs = [h["epoch"] for h in history]
        prefix = f"{name} " if len(histories) > 1 else ""
        loss_ax.plot(epochs, [h["train_loss"] for h in history], "--", color=colour, label=f"{prefix}train")
        loss_ax.plot(epochs, [h["val_loss"] for h in history], "-o", color=colour, ms=3, label=f"{prefix}val")
        acc_ax.plot(epochs, [h["train_accuracy"] for h in history], "--", color=colour, label=f"{prefix}train")
        acc_ax.plot(epochs, [h["val_accuracy"] for h in history], "-o", color=colour, ms=3, label=f"{prefix}val")
    for ax, title in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_accuracy_vs_compute(runs: dict[str, dict], path) -> None:
    """Validation accuracy against training minutes (left) and training PFLOPs (right), one line per run, with
    the test accuracy of the kept model as a star at the run's end. ``runs[name] = {"history": [...],
    "test_accuracy": float}``; history records need ``elapsed_seconds`` (and ``train_flops`` for the right)."""
    fig = Figure(figsize=(11, 4))
    time_ax, flops_ax = fig.subplots(1, 2)
    for index, (name, run) in enumerate(runs.items()):
        history, colour = run["history"], f"C{index}"
        accuracy = [h["val_accuracy"] for h in history]
        minutes = [h["elapsed_seconds"] / 60 for h in history]
        time_ax.plot(minutes, accuracy, "-o", color=colour, ms=3, label=name)
        time_ax.plot(minutes[-1:], [run["test_accuracy"]], "*", color=colour, ms=11)
        if all("train_flops" in h for h in history):
            pflops = [h["train_flops"] / 1e15 for h in history]
            flops_ax.plot(pflops, accuracy, "-o", color=colour, ms=3, label=name)
            flops_ax.plot(pflops[-1:], [run["test_accuracy"]], "*", color=colour, ms=11)
    for ax, label in ((time_ax, "training wall-clock, minutes"), (flops_ax, "training PFLOPs (3 x forward)")):
        ax.set_xlabel(label)
        ax.set_ylabel("validation accuracy (star: test accuracy)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_confusion_matrix(matrix, label_names: list[str], path) -> None:
    """Counts on the left, rows normalised to recall on the right, class names on both axes."""
    counts = np.asarray(matrix)
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    size = max(5.0, 0.45 * len(label_names) + 2)
    fig = Figure(figsize=(2 * size + 1, size))
    axes = fig.subplots(1, 2)
    annotate = len(label_names) <= 20
    for ax, values, title, fmt in ((axes[0], counts, "counts", "d"), (axes[1], normalised, "row-normalised", ".2f")):
        image = ax.imshow(values, cmap="Blues")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        ax.set_title(title)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ticks = range(len(label_names))
        ax.set_xticks(ticks, label_names, rotation=90 if len(label_names) > 10 else 45, ha="right", fontsize=7)
        ax.set_yticks(ticks, label_names, fontsize=7)
        if annotate:
            threshold = values.max() / 2 if values.max() else 1
            for i in ticks:
                for j in ticks:
                    ax.text(j, i, format(values[i, j], fmt), ha="center", va="center", fontsize=6,
                            color="white" if values[i, j] > threshold else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
