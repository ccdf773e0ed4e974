"""Optimisers and learning-rate schedules from the recipe.

Weight decay is chosen by tensor rank (matrices and convolution kernels decay; biases and norm gains
do not), as in nanoGPT, minus the model's ``no_weight_decay()`` names (position tables, CLS, registers),
as in timm. All schedules step per optimiser step, with linear warmup first.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from hfvision.recipe import TrainRecipe


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.dim() >= 2 and name not in skip else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, train: TrainRecipe) -> torch.optim.Optimizer:
    groups = parameter_groups(model, train.weight_decay)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=train.learning_rate)
    if train.optimizer == "adam":  # Adam's decay is L2 added to the gradient, as torch defines it
        return torch.optim.Adam(groups, lr=train.learning_rate)
    return torch.optim.SGD(groups, lr=train.learning_rate, momentum=train.momentum, nesterov=train.momentum > 0)


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
