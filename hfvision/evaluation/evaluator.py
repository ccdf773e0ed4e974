"""Evaluate a classifier over a loader, in one or many processes: loss and every classification metric."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import DataLoader

from hfvision.evaluation.metrics import ClassificationMetrics
from hfvision.models.outputs import logits_of


@torch.no_grad()
def evaluate_model(model, loader: DataLoader, preprocessor: Callable, accelerator: Accelerator,
                   label_names: list[str], forward: Callable = logits_of) -> dict:
    """Loss and every classification metric over ``loader``, gathered across processes without duplicates.
    ``preprocessor`` turns the loader's batches into model inputs (a ``BatchPreprocessor`` for uint8 pixels);
    ``forward`` maps (model, inputs) to logits."""
    model.eval()
    metrics = ClassificationMetrics(label_names)
    for inputs, labels in loader:
        inputs, labels = preprocessor(inputs, labels, train=False)
        logits = forward(model, inputs).float()
        losses = F.cross_entropy(logits, labels, reduction="none")
        logits, labels, losses = accelerator.gather_for_metrics((logits, labels, losses))
        metrics.add_batch(logits.cpu().numpy(), labels.cpu().numpy(), losses.cpu().numpy())
    return metrics.compute()
