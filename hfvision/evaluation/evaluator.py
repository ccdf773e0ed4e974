"""Evaluate a classifier over a loader, in one or many processes, and evaluate a saved model on a dataset."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import DataLoader

from hfvision.accelerator import make_accelerator
from hfvision.data.sources import load_eval_split
from hfvision.data.transforms import BatchPreprocessor
from hfvision.errors import HfvisionError
from hfvision.evaluation.metrics import ClassificationMetrics
from hfvision.models.factory import load_model_for_inference


def logits_of(model, pixel_values: torch.Tensor) -> torch.Tensor:
    return model(pixel_values=pixel_values).logits


@torch.no_grad()
def evaluate(model, loader: DataLoader, preprocessor: BatchPreprocessor, accelerator: Accelerator,
             label_names: list[str]) -> dict:
    """Loss and every classification metric over ``loader``, gathered across processes without duplicates."""
    model.eval()
    metrics = ClassificationMetrics(label_names)
    for images, labels in loader:
        pixel_values, labels = preprocessor(images, labels, train=False)
        logits = logits_of(model, pixel_values).float()
        losses = F.cross_entropy(logits, labels, reduction="none")
        logits, labels, losses = accelerator.gather_for_metrics((logits, labels, losses))
        metrics.add_batch(logits.cpu().numpy(), labels.cpu().numpy(), losses.cpu().numpy())
    return metrics.compute()



def evaluate_saved_model(model_name: str, dataset: str, split: str = "test", batch_size: int = 256,
                         max_samples: int | None = None) -> dict:
    """The ``test``-style metrics block of a saved model dir, run dir or Hub id on one split of ``dataset``."""
    accelerator = make_accelerator()
    built = load_model_for_inference(model_name)
    with accelerator.main_process_first():
        data, label_names = load_eval_split(dataset, split, built.normalization.size, max_samples)
    model_labels = [built.model.config.id2label[i] for i in range(built.model.config.num_labels)]
    if model_labels != label_names:
        raise HfvisionError(f"--data: the model's labels ({', '.join(model_labels[:5])}, ...) differ from "
                            f"the dataset's ({', '.join(label_names[:5])}, ...)")
    model, loader = accelerator.prepare(built.model, data.loader(batch_size, shuffle=False))
    accelerator.print(f"evaluating {len(data)} images on {accelerator.num_processes} process(es)")
    return evaluate(model, loader, BatchPreprocessor(built.normalization), accelerator, label_names)
