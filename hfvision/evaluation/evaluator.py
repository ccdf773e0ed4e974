"""Evaluate a classifier over a loader, in one or many processes: loss and every classification metric."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import DataLoader

from hfvision.data.transforms import BatchPreprocessor
from hfvision.evaluation.metrics import ClassificationMetrics
from hfvision.models.outputs import logits_of


@torch.no_grad()
def evaluate_model(model, loader: DataLoader, preprocessor: BatchPreprocessor | None, accelerator: Accelerator,
                   label_names: list[str]) -> dict:
    """Loss and every classification metric over ``loader``, gathered across processes without duplicates.
    ``preprocessor`` turns uint8 batches into model inputs; None feeds the loader's tensors as they are."""
    model.eval()
    metrics = ClassificationMetrics(label_names)
    for inputs, labels in loader:
        if preprocessor is not None:
            inputs, labels = preprocessor(inputs, labels, train=False)
        logits = logits_of(model, inputs).float()
        losses = F.cross_entropy(logits, labels, reduction="none")
        logits, labels, losses = accelerator.gather_for_metrics((logits, labels, losses))
        metrics.add_batch(logits.cpu().numpy(), labels.cpu().numpy(), losses.cpu().numpy())
    return metrics.compute()
