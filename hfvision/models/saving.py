"""Writing a model dir: ``save_pretrained`` of a plain transformers model, so every saved dir loads with
``from_pretrained`` alone; a LoRA model is saved as its merged copy, with the adapter beside it
(``hfvision.models.lora``)."""

from __future__ import annotations

from pathlib import Path

from peft import PeftModel
from torch import nn

from hfvision.models.lora import ADAPTER_DIR, merged_copy


def save_model(model: nn.Module, directory: str | Path) -> None:
    """``save_pretrained`` of a plain model; for a LoRA model the merged copy, plus the adapter in ``adapter/``."""
    if not isinstance(model, PeftModel):
        model.save_pretrained(directory)
        return
    merged_copy(model).save_pretrained(directory)
    model.save_pretrained(Path(directory) / ADAPTER_DIR)
