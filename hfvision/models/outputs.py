"""The one adapter from a classifier to logits: HF models return a ``ModelOutput``, plain modules a tensor."""

from __future__ import annotations

import torch
from torch import nn


def logits_of(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    out = model(pixel_values=pixel_values)
    return out.logits if hasattr(out, "logits") else out


def channels_last_logits(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """``logits_of`` with the batch laid out channels-last, for a model converted with
    ``model.to(memory_format=torch.channels_last)`` (``train.channels_last``)."""
    return logits_of(model, pixel_values.contiguous(memory_format=torch.channels_last))


class LogitsOnly(nn.Module):
    """``pixels -> logits`` as a module, for tools that want a tensor-valued ``forward`` (Captum)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model, pixel_values)
