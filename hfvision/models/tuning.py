"""Tuning strategies: which parameters train.

- ``full``: everything;
- ``head_only``: the classifier alone, the backbone frozen (linear probing);
- ``head_and_last_stage``: the classifier, the last encoder block/stage and the final norm;
- ``lora``: low-rank adapters on the attention projections plus the classifier (``hfvision.models.lora``).

Heads and stages are found by probing the module tree, not by hard-coded paths, because module names
differ across families and transformers versions (``vit.encoder.layer`` in 4.x, ``vit.layers`` in 5.x).
"""

from __future__ import annotations

from torch import nn

from hfvision.recipe import LoraRecipe

NORM_TYPES = (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.BatchNorm2d)


def find_classifier(model: nn.Module) -> nn.Module:
    """The classification head: ``classifier``/``head``/``fc`` or timm's ``get_classifier()``."""
    for name in ("classifier", "head", "fc"):
        module = getattr(model, name, None)
        if isinstance(module, nn.Module):
            return module
    timm_model = getattr(model, "timm_model", None)
    if timm_model is not None and hasattr(timm_model, "get_classifier"):
        return timm_model.get_classifier()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__}: no classification head found")
    return linears[-1]


def classifier_name(model: nn.Module) -> str:
    """The qualified module name of :func:`find_classifier`'s head (e.g. ``classifier``, ``timm_model.head.fc``)."""
    classifier = find_classifier(model)
    return next(name for name, module in model.named_modules() if module is classifier)


def find_stages(model: nn.Module) -> tuple[str, nn.Module]:
    """The outermost ``ModuleList``/``Sequential`` holding the most parameters: the encoder's blocks or stages
    (``vit.layers``, ``swin.encoder.layers``, timm's ``blocks``, ``resnet.stages``)."""
    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.ModuleList, nn.Sequential)) and len(m)]
    outer = [(n, m) for n, m in lists if not any(n.startswith(o + ".") for o, _ in lists if o != n)]
    if not outer:
        raise ValueError(f"{type(model).__name__}: no list of encoder blocks or stages found")
    return max(outer, key=lambda item: sum(p.numel() for p in item[1].parameters()))


def find_final_norm(model: nn.Module, stages_name: str, classifier: nn.Module) -> nn.Module | None:
    """The last norm layer registered after the stages and outside them and the head (e.g. ``vit.layernorm``)."""
    head_ids = {id(m) for m in classifier.modules()}
    names = [name for name, _ in model.named_modules()]
    after = names.index(stages_name)
    candidates = [m for name, m in list(model.named_modules())[after:]
                  if isinstance(m, NORM_TYPES) and not name.startswith(stages_name + ".") and id(m) not in head_ids]
    return candidates[-1] if candidates else None


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
        # imported here: lora reads the family registry, which itself reads this module's helpers
        from hfvision.models.lora import add_lora

        return add_lora(model, lora or LoraRecipe(), classifier_name(model))
    model.requires_grad_(False)
    for module in trainable_modules(model, strategy):
        module.requires_grad_(True)
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


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
