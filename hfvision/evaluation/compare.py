"""One comparison table across run dirs (Markdown and CSV) plus overlaid curves: the table studies build by hand."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from hfvision.errors import HfvisionError
from hfvision.evaluation.plots import plot_accuracy_vs_compute, plot_curves

COLUMNS = ("run", "model", "tuning", "parameters", "trainable_parameters", "flops_per_image", "epoch_seconds",
           "inference_ms_per_batch", "train_accuracy", "val_accuracy", "test_accuracy", "test_macro_f1", "best_epoch",
           "epochs", "train_minutes", "train_pflops")


def run_row(run_dir: Path) -> dict:
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise HfvisionError(f"{run_dir}: no metrics.json (is it a finished run dir?)")
    metrics = json.loads(path.read_text())
    history = metrics.get("history") or []
    best = next((h for h in history if h["epoch"] == metrics.get("best_epoch")), history[-1] if history else {})
    model, timing = metrics.get("model", {}), metrics.get("timing", {})
    return {
        "run": Path(run_dir).name, "model": model.get("name"), "tuning": model.get("tuning"),
        "parameters": model.get("parameters"), "trainable_parameters": model.get("trainable_parameters"),
        "flops_per_image": model.get("flops_per_image"), "epoch_seconds": timing.get("train_seconds_per_epoch"),
        "inference_ms_per_batch": timing.get("inference_ms_per_batch"),
        "train_accuracy": best.get("train_accuracy"), "val_accuracy": best.get("val_accuracy"),
        "test_accuracy": metrics["test"]["accuracy"], "test_macro_f1": metrics["test"]["macro_f1"],
        "best_epoch": metrics.get("best_epoch"), "history": history,
        "epochs": len(history), "train_minutes": _training(metrics, "seconds", 1 / 60),
        "train_pflops": _training(metrics, "train_flops", 1e-15),
    }


def _training(metrics: dict, key: str, scale: float) -> float | None:
    value = metrics.get("training", {}).get(key)
    return value * scale if value is not None else None


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if value < 10 else f"{value:.1f}"
    if isinstance(value, int) and value >= 10_000:
        return f"{value:,}"
    return str(value)


def markdown_table(rows: list[dict], columns: Sequence[str] = COLUMNS, cell: Callable[[object], str] = _cell) -> str:
    """A Markdown table of ``rows`` (dicts keyed by column), each value written by ``cell``; by default the run
    comparison's columns and number formats."""
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_run_comparison(run_dirs: list[Path], out: Path) -> list[dict]:
    """Write ``out`` (.md), the same table as ``.csv`` and ``curves`` beside it; return the rows."""
    rows = [run_row(d) for d in run_dirs]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(markdown_table(rows))
    with out.with_suffix(".csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    histories = {row["run"]: row["history"] for row in rows if row["history"]}
    if histories:
        plot_curves(histories, out.with_name(out.stem + "_curves.png"))
    timed = {row["run"]: {"history": row["history"], "test_accuracy": row["test_accuracy"]} for row in rows
             if row["history"] and all("elapsed_seconds" in h for h in row["history"])}
    if timed:
        plot_accuracy_vs_compute(timed, out.with_name(out.stem + "_accuracy_vs_time.png"))
    return rows
