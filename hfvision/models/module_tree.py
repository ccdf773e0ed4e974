"""Probing a model's module tree: the classification head, the list of encoder blocks or stages, the final norm,
parameter counts. Tuning, the family registry, the factory, the feature cache, PCA and the profiler use these.

Heads and stages are found by probing, not by hard-coded paths, because module names differ across families and
transformers versions (``vit.encoder.layer`` in 4.x, ``vit.layers`` in 5.x). This module imports nothing of hfvision.
"""

from __future__ import annotations

from torch import nn

NORM_LAYERS = (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.BatchNorm2d)


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
                  if isinstance(m, NORM_LAYERS) and not name.startswith(stages_name + ".") and id(m) not in head_ids]
    return candidates[-1] if candidates else None


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
