"""Optimisers, learning-rate schedules and learning-rate advice from the recipe.

Weight decay is chosen by tensor rank (matrices and convolution kernels decay; biases and norm gains
do not), as in nanoGPT, minus the model's ``no_weight_decay()`` names (position tables, CLS, registers),
as in timm. Layer-wise learning-rate decay (``train.layer_decay``, BEiT, Bao et al. 2022, arXiv:2106.08254;
timm's ``param_groups_layer_decay``) gives layer ``i`` of ``L`` the learning rate
``lr * layer_decay ** (L + 1 - i)``: embeddings ``i = 0``, the head ``i = L + 1`` (depths from
``hfvision.models.families``); it splits each weight-decay group by depth. All schedules step per optimiser
step, with linear warmup first; ``LambdaLR`` scales each group's own initial learning rate.
"""

from __future__ import annotations

import logging
import math

import torch
from accelerate import PartialState
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from hfvision.errors import HfvisionError
from hfvision.models.families import BUILT_IN, supported_model_types, tuning_family
from hfvision.models.lora import plain_model
from hfvision.recipe import ModelRecipe, TrainRecipe

logger = logging.getLogger("hfvision")


def _layer_depths(model: nn.Module) -> dict[str, int]:
    family = tuning_family(model)
    if family is None:
        raise HfvisionError(f"train.layer_decay: no layer-depth table for model type '{model.config.model_type}' "
                            f"(there is one for {supported_model_types()}); drop train.layer_decay")
    return family.layer_depths(model)


def parameter_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """Optimiser groups of the trainable parameters: decayed or not by rank, and with ``layer_decay`` one pair
    per depth, the head's first. Each group's ``lr_scale`` multiplies the base learning rate."""
    model = plain_model(model)  # a LoRA model's names without peft's prefix, as no_weight_decay() gives them
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    depths = _layer_depths(model) if layer_decay is not None else {}
    top = max(depths.values(), default=0)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decays = param.dim() >= 2 and name not in skip
        depth = depths.get(name, top)
        group = groups.setdefault((depth, decays), {
            "params": [], "weight_decay": weight_decay if decays else 0.0,
            "lr_scale": layer_decay ** (top - depth) if layer_decay is not None else 1.0})
        group["params"].append(param)
    if layer_decay is None:
        return [groups.get((0, True), {"params": [], "weight_decay": weight_decay, "lr_scale": 1.0}),
                groups.get((0, False), {"params": [], "weight_decay": 0.0, "lr_scale": 1.0})]
    return [groups[key] for key in sorted(groups, key=lambda key: (-key[0], not key[1]))]


def build_optimizer(model: nn.Module, train: TrainRecipe) -> torch.optim.Optimizer:
    groups = parameter_groups(model, train.weight_decay, train.layer_decay)
    for group in groups:  # every group carries its rate, so the optimisers' own default is never used
        group["lr"] = train.learning_rate * group["lr_scale"]
    if train.optimizer == "adamw":
        return torch.optim.AdamW(groups)
    if train.optimizer == "adam":  # Adam's decay is L2 added to the gradient, as torch defines it
        return torch.optim.Adam(groups)
    return torch.optim.SGD(groups, momentum=train.momentum, nesterov=train.momentum > 0)


class ScheduleLength:
    """How many optimiser steps the schedule spans: ``epochs x steps per epoch``, or under
    ``train.time_budget_minutes`` the trainer's running estimate of the steps that fit in the budget
    (``hfvision.training.trainer.TimeBudget`` updates ``total_steps``)."""

    def __init__(self, total_steps: int):
        self.total_steps = max(int(total_steps), 1)


def lr_multiplier(step: int, *, train: TrainRecipe, steps_per_epoch: int, total_steps: int | None = None) -> float:
    """Factor on the base learning rate after ``step`` optimiser steps of a schedule ``total_steps`` long."""
    warmup = round(train.warmup_epochs * steps_per_epoch)
    total = total_steps or max(train.epochs * steps_per_epoch, 1)
    if step < warmup:
        return (step + 1) / warmup
    if train.scheduler == "cosine":
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    if train.scheduler == "step":
        return train.step_gamma ** (step // (train.step_size_epochs * steps_per_epoch))
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainRecipe, steps_per_epoch: int,
                    length: ScheduleLength | None = None) -> LambdaLR:
    length = length or ScheduleLength(train.epochs * steps_per_epoch)
    return LambdaLR(optimizer, lambda step: lr_multiplier(step, train=train, steps_per_epoch=steps_per_epoch,
                                                          total_steps=length.total_steps))


def unusual_learning_rate(model: ModelRecipe, train: TrainRecipe) -> str | None:
    """Advice where a pretrained checkpoint meets a learning rate that rarely suits its tuning mode (the
    combinations the HW4 and HW6 studies tripped on), or None. Built-in families train from scratch: no advice."""
    lr = train.learning_rate
    if train.allow_unusual_lr or model.name in BUILT_IN:
        return None
    silence = "set train.allow_unusual_lr: true to silence this"
    # layer decay below 0.9 is the other fix the advice names: the early blocks then learn at a small fraction of lr
    if model.tuning == "full" and lr >= 1e-3 and (train.layer_decay is None or train.layer_decay >= 0.9):
        return (f"train.learning_rate {lr:g} is high for full fine-tuning of a pretrained checkpoint (usual range "
                f"1e-5 to 1e-4, or add train.layer_decay below 0.9; HW4's ViT-B/32 at 1e-3 fell to 48.6%); {silence}")
    if model.tuning == "lora" and lr >= 1e-3:
        return (f"train.learning_rate {lr:g} is high for LoRA on a pretrained checkpoint (usual range 1e-4 to "
                f"5e-4); {silence}")
    if model.tuning == "head_only" and lr <= 1e-4:
        return (f"train.learning_rate {lr:g} is low for training a new head on a frozen backbone (usual range "
                f"1e-3 to 1e-2; HW6's Swin-T head-only at 2e-5 reached 64.6% on CIFAR-100); {silence}")
    return None


def warn_unusual_learning_rate(model: ModelRecipe, train: TrainRecipe) -> None:
    """Log :func:`unusual_learning_rate`'s advice as one warning line, on the main process only."""
    advice = unusual_learning_rate(model, train)
    if advice is not None and PartialState().is_main_process:
        logger.warning("warning: %s", advice)
