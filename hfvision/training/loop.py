"""The Accelerate training loop: ``train_one_epoch`` and ``evaluate`` (each returning a dict) and ``fit``.

The same code runs on one CPU, one GPU, or many processes under ``accelerate launch``/``torchrun``.
Epoch ``e`` reseeds every RNG with ``seed + e`` and the sampler draws its order from (seed, e), so a run
resumed from ``checkpoint/`` continues exactly as if it had not stopped.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from hfvision.data.transforms import BatchPreprocessor
from hfvision.evaluation.evaluator import logits_of
from hfvision.models.tuning import set_train_mode
from hfvision.recipe import TrainRecipe


def make_ema(model: torch.nn.Module, decay: float) -> AveragedModel:
    """Exponential moving average of weights and buffers (BatchNorm statistics too)."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


@dataclass
class TrainingParts:
    """What the loop works on, after ``accelerator.prepare``."""

    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    train_loader: DataLoader
    preprocessor: BatchPreprocessor
    train: TrainRecipe
    seed: int
    ema: AveragedModel | None = None


def train_one_epoch(parts: TrainingParts, epoch: int) -> dict:
    accelerator, model, train = parts.accelerator, parts.model, parts.train
    set_seed(parts.seed + epoch)
    parts.train_loader.set_epoch(epoch)
    generator = torch.Generator().manual_seed(parts.seed * 1000 + epoch * 16 + accelerator.process_index)
    set_train_mode(model)
    total_loss = torch.zeros((), device=accelerator.device)
    correct = torch.zeros((), device=accelerator.device)
    seen = torch.zeros((), device=accelerator.device)
    start = time.perf_counter()
    progress = tqdm(parts.train_loader, desc=f"epoch {epoch + 1}/{train.epochs}", leave=False,
                    disable=not accelerator.is_local_main_process)
    for step, (images, labels) in enumerate(progress):
        pixel_values, targets = parts.preprocessor(images, labels, train=True, generator=generator)
        with accelerator.accumulate(model):
            logits = logits_of(model, pixel_values)
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=train.label_smoothing)
            accelerator.backward(loss)
            if accelerator.sync_gradients and train.max_grad_norm is not None:
                accelerator.clip_grad_norm_(model.parameters(), train.max_grad_norm)
            parts.optimizer.step()
            parts.scheduler.step()
            parts.optimizer.zero_grad(set_to_none=True)
        if parts.ema is not None and accelerator.sync_gradients:
            parts.ema.update_parameters(accelerator.unwrap_model(model))
        hard_targets = targets.argmax(dim=1) if targets.dim() == 2 else targets
        batch = labels.shape[0]
        total_loss += loss.detach() * batch
        correct += (logits.argmax(dim=1) == hard_targets).sum()
        seen += batch
        if accelerator.is_local_main_process and step % 10 == 0:  # .item() waits for the device
            progress.set_postfix(loss=f"{loss.item():.3f}", acc=f"{(correct / seen).item():.3f}",
                                 lr=f"{parts.scheduler.get_last_lr()[0]:.2e}")
    totals = accelerator.reduce(torch.stack([total_loss, correct, seen]), reduction="sum")
    seconds = time.perf_counter() - start
    return {"train_loss": (totals[0] / totals[2]).item(), "train_accuracy": (totals[1] / totals[2]).item(),
            "learning_rate": parts.scheduler.get_last_lr()[0], "epoch_seconds": seconds,
            "train_images_per_second": totals[2].item() / seconds}


def steps_per_epoch(num_batches: int, accumulation: int) -> int:
    """Optimiser steps per epoch, counted on the global (unsharded) loader as Accelerate's scheduler expects."""
    return max(math.ceil(num_batches / accumulation), 1)
