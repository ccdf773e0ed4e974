"""Tuning strategies: which parameters train.

- ``full``: everything;
- ``head_only``: the classifier alone, the backbone frozen (linear probing);
- ``head_and_last_stage``: the classifier, the last encoder block/stage and the final norm;
- ``lora``: low-rank adapters on the attention projections plus the classifier (``hfvision.models.lora``).

Heads and stages are found by probing the module tree (``hfvision.models.module_tree``).
"""

from __future__ import annotations

from torch import nn

from hfvision.models.lora import add_lora
from hfvision.models.module_tree import classifier_name, find_classifier, find_final_norm, find_stages
from hfvision.recipe import LoraRecipe


def trainable_modules(model: nn.Module, strategy: str) -> list[nn.Module]:
    classifier = find_classifier(model)
    if strategy == "head_only":
        return [classifier]
    if strategy == "head_and_last_stage":
        stages_name, stages = find_stages(model)
        norm = find_final_norm(model, stages_name, classifier)
        return [classifier, stages[-1]] + ([norm] if norm is not None else [])
    raise ValueError(f"model.tuning: '{strategy}' is not one of full, head_only, head_and_last_stage, lora")


def apply_tuning(model: nn.Module, strategy: str, lora: LoraRecipe | None = None) -> nn.Module:
    """Set ``requires_grad`` per strategy and return the model to train: ``model`` itself, or for ``lora`` a
    ``PeftModel`` around it. Frozen parameters keep their values bit for bit."""
    if strategy == "full":
        model.requires_grad_(True)
        return model
    if strategy == "lora":
        return add_lora(model, lora or LoraRecipe(), classifier_name(model))
    model.requires_grad_(False)
    for module in trainable_modules(model, strategy):
        module.requires_grad_(True)
    return model


def set_train_mode(model: nn.Module) -> None:
    """``model.train()``, except that what is frozen runs as at inference (standard linear probing): a fully
    frozen sub-module, and a parameter-free one (dropout, drop path) whose parent is partly frozen, stay in
    eval mode. A parameter-free module inside a trainable block (its dropout) trains with it."""
    model.train()
    for parent in model.modules():
        parent_params = list(parent.parameters())
        parent_partly_frozen = any(not p.requires_grad for p in parent_params)
        for child in parent.children():
            params = list(child.parameters())
            if (params and not any(p.requires_grad for p in params)) or (not params and parent_partly_frozen):
                child.eval()
