"""Batch prediction with a trained model: image files, folders (recursively) or a dataset split -> top-k labels
and probabilities per image, as CSV or JSON Lines, with a summary line.

Images go through the one decode-and-resize path of training and evaluation (``hfvision.data.images``:
``load_rgb``, ``resize_rgb``, then ``BatchPreprocessor.resize_and_normalize``), so a model predicts on the pixels
it was evaluated on. An unreadable file is named and skipped (counted in the summary), never the end of the run.
Under ``torchrun`` / ``accelerate launch`` each process takes its share of the images and the main process
writes the one output.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from hfvision.accelerator import make_accelerator
from hfvision.data.images import UnreadableImage, image_files, load_pixels
from hfvision.data.sources import load_eval_split
from hfvision.data.transforms import BatchPreprocessor
from hfvision.errors import HfvisionError
from hfvision.export import is_onnx_dir, load_onnx_for_inference
from hfvision.fileio import finite_json
from hfvision.models.factory import BuiltModel, load_model_for_inference

OUTPUT_FORMATS = (".csv", ".jsonl")


@dataclass
class Predictions:
    """One row per image that was read (``rows``), the files that were not (``skipped``: "name: reason")."""

    rows: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        line = f"predicted {len(self.rows)} image(s)"
        if self.skipped:
            line += f"; skipped {len(self.skipped)} unreadable: {'; '.join(self.skipped[:3])}"
            line += " ..." if len(self.skipped) > 3 else ""
        labelled = [row for row in self.rows if row.get("true_label") is not None]
        if labelled:
            right = sum(row["label"] == row["true_label"] for row in labelled)
            line += f"; top-1 {right}/{len(labelled)} = {right / len(labelled):.4f} against the split's labels"
        return line


def _top_k(probabilities: torch.Tensor, id2label: dict, k: int) -> list[dict]:
    values, indices = probabilities.topk(min(k, probabilities.shape[-1]), dim=-1)
    rows = []
    for scores, ids in zip(values.tolist(), indices.tolist()):
        top = [{"label": id2label[i], "score": s} for i, s in zip(ids, scores)]
        rows.append({"label": top[0]["label"], "score": top[0]["score"], "top_k": top})
    return rows


@torch.no_grad()
def _classify(built: BuiltModel, pixels: torch.Tensor, accelerator: Accelerator, k: int) -> list[dict]:
    device = accelerator.device if isinstance(built.model, torch.nn.Module) else "cpu"
    inputs = BatchPreprocessor(built.spec).resize_and_normalize(pixels.to(device))
    probabilities = built.model(pixel_values=inputs).logits.float().softmax(dim=-1).cpu()
    return _top_k(probabilities, built.model.config.id2label, k)


def _predict_files(built: BuiltModel, files: list[Path], accelerator: Accelerator, batch_size: int,
                   k: int) -> Predictions:
    mine = Predictions()
    with accelerator.split_between_processes(files) as my_files:
        progress = tqdm(total=len(my_files), desc="predicting", unit="img",
                        disable=not (accelerator.is_local_main_process and sys.stderr.isatty()))
        for start in range(0, len(my_files), batch_size):
            batch, names = [], []
            for path in my_files[start:start + batch_size]:
                try:  # resized at decode to the model's input: every image of a batch has one shape
                    batch.append(load_pixels(path, built.spec.decode_size, str(path), built.spec.crop_pct))
                    names.append(str(path))
                except UnreadableImage as exc:
                    mine.skipped.append(str(exc))
            if batch:
                rows = _classify(built, torch.cat(batch), accelerator, k)
                mine.rows += [{"file": name, **row} for name, row in zip(names, rows)]
            progress.update(len(my_files[start:start + batch_size]))
        progress.close()
    return _gathered(mine, accelerator)


def _predict_split(built: BuiltModel, dataset: str, split: str, accelerator: Accelerator, batch_size: int,
                   k: int, max_samples: int | None) -> Predictions:
    with accelerator.main_process_first():
        data, label_names = load_eval_split(dataset, split, built.spec.decode_size, max_samples, on_bad_image="skip",
                                             crop_pct=built.spec.crop_pct)
    mine = Predictions(skipped=data.skipped if accelerator.is_main_process else [])
    with accelerator.split_between_processes(list(range(len(data)))) as my_indices:
        for start in range(0, len(my_indices), batch_size):
            indices = my_indices[start:start + batch_size]
            rows = _classify(built, data.pixels[indices], accelerator, k)
            mine.rows += [{"file": f"{split}[{i}]", **row, "true_label": label_names[int(data.labels[i])]}
                          for i, row in zip(indices, rows)]
    return _gathered(mine, accelerator)


def _gathered(mine: Predictions, accelerator: Accelerator) -> Predictions:
    """Every process's rows, in process order (each took a contiguous share), on every process."""
    if accelerator.num_processes == 1:
        return mine
    parts = gather_object([mine])
    return Predictions([row for part in parts for row in part.rows], [s for part in parts for s in part.skipped])


def write_predictions(predictions: Predictions, out: Path) -> None:
    """CSV (file, label, score, top_k as ``label:score`` joined by ``|``) or JSON Lines (one object per image)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", newline="") as f:
        if out.suffix == ".jsonl":
            for row in predictions.rows:
                f.write(json.dumps(finite_json(row), allow_nan=False) + "\n")
        else:
            writer = csv.writer(f)
            labelled = any("true_label" in row for row in predictions.rows)
            writer.writerow(["file", "label", "score", "top_k"] + (["true_label"] if labelled else []))
            for row in predictions.rows:
                top = "|".join(f"{t['label']}:{t['score']:.6f}" for t in row["top_k"])
                writer.writerow([row["file"], row["label"], f"{row['score']:.6f}", top]
                                + ([row.get("true_label", "")] if labelled else []))
    tmp.replace(out)


def predict(model: str, inputs: list[str] | None = None, *, data: str | None = None, split: str = "test",
            out: Path | None = None, top_k: int = 5, batch_size: int = 64, max_samples: int | None = None,
            accelerator: Accelerator | None = None) -> Predictions:
    """Top-k predictions of ``model`` (run dir, model dir, Hub id or ``hfvision export`` dir) for image files/folders or a dataset split;
    written to ``out`` (``.csv`` or ``.jsonl``) by the main process when given."""
    if (inputs is None) == (data is None):
        raise HfvisionError("predict: give image files/folders or --data SOURCE, not both and not neither")
    if out is not None and Path(out).suffix not in OUTPUT_FORMATS:
        raise HfvisionError(f"--out: {out} should end in {' or '.join(OUTPUT_FORMATS)}")
    if top_k < 1 or batch_size < 1:
        raise HfvisionError(f"--top-k and --batch-size: expected positive integers, got {top_k} and {batch_size}")
    files = image_files(inputs) if inputs is not None else None
    accelerator = accelerator or make_accelerator()
    if is_onnx_dir(model):  # an ``hfvision export`` dir: onnxruntime on the CPU, no torch model built
        built = load_onnx_for_inference(model)
    else:
        built = load_model_for_inference(model, accelerator.device)
    if files is not None:
        predictions = _predict_files(built, files, accelerator, batch_size, top_k)
    else:
        predictions = _predict_split(built, data, split, accelerator, batch_size, top_k, max_samples)
    if out is not None and accelerator.is_main_process:
        write_predictions(predictions, Path(out))
    return predictions
