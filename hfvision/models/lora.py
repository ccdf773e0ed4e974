"""LoRA through peft: low-rank adapters on the attention projections, the new classifier trained in full.

LoRA (Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685) freezes a
pretrained weight ``W`` and learns ``W + (alpha / r) * B @ A`` with ``A`` (r x in) and ``B`` (out x r, zero at
start). The target modules per family come from ``hfvision.models.families``; the classifier, new for the
dataset's labels, is a peft ``modules_to_save`` module (a trained copy beside the frozen original).

What a run saves (``hfvision.models.saving``) is the merged model (``merge_and_unload`` of a copy, so training
goes on with its adapters): a plain transformers model that loads with ``from_pretrained`` and
``pipeline("image-classification")`` without peft, with the adapter in ``adapter/`` beside it for
``PeftModel.from_pretrained(base, dir/adapter)``.
"""

from __future__ import annotations

import copy

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from hfvision.errors import HfvisionError
from hfvision.models.families import supported_model_types, tuning_family
from hfvision.recipe import LoraRecipe

ADAPTER_DIR = "adapter"


def lora_targets(model: nn.Module, lora: LoraRecipe) -> list[str]:
    """The recipe's ``target_modules``, else the family's default."""
    if lora.target_modules:
        return list(lora.target_modules)
    family = tuning_family(model)
    if family is None:
        raise HfvisionError(f"model.lora.target_modules: no default for model type '{model.config.model_type}' "
                            f"(defaults exist for {supported_model_types()}); name the modules to adapt")
    return list(family.lora_targets)


def add_lora(model: nn.Module, lora: LoraRecipe, classifier_name: str) -> PeftModel:
    """``model`` with LoRA adapters on its target modules; only they and the classifier train."""
    targets = lora_targets(model, lora)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                        modules_to_save=[classifier_name])
    try:
        return get_peft_model(model, config)
    except ValueError as exc:  # peft: "Target modules {...} not found in the base model"
        first = str(exc).strip().splitlines()[0]
        raise HfvisionError(f"model.lora.target_modules: {targets} do not name modules of "
                            f"{type(model).__name__} ({first})") from None


def plain_model(model: nn.Module) -> nn.Module:
    """The transformers model inside a ``PeftModel`` (same parameters, names without peft's prefix)."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def merged_copy(model: PeftModel) -> nn.Module:
    """A plain transformers model with the adapters folded into the weights; ``model`` is left as it was."""
    return copy.deepcopy(model).merge_and_unload()

