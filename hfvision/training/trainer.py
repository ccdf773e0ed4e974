"""The Accelerate training loop: ``train_epochs`` runs epochs of ``train_one_epoch``, validates through a callback,
keeps ``best/``/``last/`` and writes checkpoints. It only trains: data, models, evaluation and sharing are the
pipeline's (``hfvision.pipeline``).

The same code runs on one CPU, one GPU, or many processes under ``accelerate launch``/``torchrun``.

Exact resume, at any optimiser step. Every batch draws its randomness (augmentation, mixup, dropout, drop path)
from seeds that are a pure function of (seed, epoch, batch, process), and the sampler's order from (seed, epoch);
so a run restored from ``checkpoint/`` (weights, optimiser, scheduler, EMA, Accelerate's accumulation counter,
the epoch's running totals) and fast-forwarded past the batches it had done (``skip_first_batches``) continues
as if it had not stopped. Checkpoints are written at optimiser-step boundaries only, so no half-accumulated
gradient is ever lost. SIGTERM (a scheduler's preemption) and SIGUSR1 (SLURM's warning before a time limit)
finish the current step, write a checkpoint and end the run with one line (``RunInterrupted``).
"""

from __future__ import annotations

import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from hfvision.data.transforms import BatchPreprocessor
from hfvision.errors import HfvisionError, RunInterrupted
from hfvision.models.outputs import logits_of
from hfvision.models.tuning import set_train_mode
from hfvision.recipe import TrainRecipe
from hfvision.training.checkpoint import save_checkpoint, save_model_dir
from hfvision.training.feature_cache import FeatureBatches
from hfvision.training.optim import ScheduleLength
from hfvision.training.state import TrainerState

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
LOG_EVERY_BATCHES = 50  # progress lines when the output is not a terminal (timm's train.py log_interval)


class NonFiniteLoss(HfvisionError):
    """The loss or the weights became NaN or infinite; nothing was saved after the last good checkpoint."""


def all_finite(accelerator: Accelerator, tensors) -> bool:
    """Whether every value of ``tensors`` is finite on every process (one small all-reduce under several)."""
    flag = torch.stack([torch.isfinite(t.detach()).all() for t in tensors]).all().float()
    if accelerator.num_processes > 1:
        flag = accelerator.reduce(flag, reduction="sum") / accelerator.num_processes
    return flag.item() == 1.0


def non_finite(what: str, where: str, parts: TrainingParts, run_dir: Path) -> NonFiniteLoss:
    checkpoint = run_dir / "checkpoint"
    kept = (f"the last good checkpoint, {checkpoint}, is kept: rerun with train.resume=true after fixing the cause"
            if checkpoint.exists() else "no checkpoint had been written yet")
    return NonFiniteLoss(f"train: the {what} became NaN or infinite at {where}; likely causes: "
                         f"train.learning_rate ({parts.train.learning_rate:g}) too high for this model, or data.mean/"
                         f"data.std that do not fit these images; training stopped before saving anything more, and "
                         f"{kept}")


def make_ema(model: torch.nn.Module, decay: float) -> AveragedModel:
    """Exponential moving average of weights and buffers (BatchNorm statistics too): the first optimiser step's
    weights are copied, then after each step ``ema = decay * ema + (1 - decay) * weights`` (torch's AveragedModel)."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def steps_per_epoch(num_batches: int, accumulation: int) -> int:
    """Optimiser steps per epoch, counted on the global (unsharded) loader as Accelerate's scheduler expects."""
    return max(math.ceil(num_batches / accumulation), 1)


def batch_seed(seed: int, epoch: int, batch: int, process: int) -> int:
    """The seed of one batch's randomness on one process (see the module docstring)."""
    return (((seed * 1_000_003 + epoch) * 1_000_003 + batch) * 1_009 + process) % (2 ** 63)


@dataclass
class TrainingParts:
    """What the loop works on, after ``accelerator.prepare``. ``preprocessor`` turns the loader's batches into model
    inputs (``BatchPreprocessor`` for uint8 pixels, ``FeatureBatches`` for cached features);
    ``forward`` maps (model, inputs) to logits."""

    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    train_loader: DataLoader
    preprocessor: BatchPreprocessor | FeatureBatches
    train: TrainRecipe
    seed: int
    ema: AveragedModel | None = None
    schedule_length: ScheduleLength | None = None  # resized under train.time_budget_minutes
    forward: Callable = logits_of

    def kept_model(self) -> torch.nn.Module:
        """The weights that are validated and saved: the EMA's when ``train.ema_decay`` is set."""
        return self.ema.module if self.ema is not None else self.model


class StopSignals:
    """While active, SIGTERM/SIGUSR1 set ``requested`` (the loop stops after the current step) instead of killing."""

    def __init__(self):
        self.requested: signal.Signals | None = None
        self._previous = {}

    def __enter__(self):
        for sig in STOP_SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave the default behaviour
                pass
        return self

    def _handle(self, signum, frame):
        self.requested = signal.Signals(signum)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class TimeBudget:
    """``train.time_budget_minutes``: a wall-clock budget for training and validation together. Every
    ``CALIBRATION_STEPS`` optimiser steps and at every epoch end, the schedule is resized to the steps that fit
    at the rate measured so far; the loop stops at a step boundary once the budget is spent. The clock
    continues across a resume (``TrainerState.elapsed_seconds``)."""

    CALIBRATION_STEPS = 20

    def __init__(self, minutes: float | None, state: TrainerState, length: ScheduleLength | None,
                 accelerator: Accelerator):
        self.seconds = minutes * 60 if minutes else None
        self.length, self.accelerator = length, accelerator
        self.start = time.perf_counter() - state.elapsed_seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def spent(self) -> bool:
        return self.seconds is not None and self.elapsed() >= self.seconds

    def total_steps(self) -> int | None:
        return self.length.total_steps if self.length is not None else None

    def resize(self, steps_done: int) -> None:
        if self.seconds is None or self.length is None or steps_done == 0:
            return
        elapsed = torch.tensor(self.elapsed(), device=self.accelerator.device)
        elapsed = self.accelerator.reduce(elapsed, reduction="mean").item()  # every process, one schedule
        self.length.total_steps = max(steps_done + 1, round(self.seconds * steps_done / elapsed))


class StepCheckpoints:
    """Decides, after each optimiser step, whether to write a checkpoint (every N steps, every M minutes, or on a
    stop signal). Processes agree on time- and signal-triggered stops with one small all-reduce every
    ``agree_every`` steps, so they all checkpoint at the same step."""

    def __init__(self, parts: TrainingParts, run_dir: Path, state: TrainerState, signals: StopSignals,
                 budget: TimeBudget | None = None):
        self.parts, self.run_dir, self.state, self.signals = parts, run_dir, state, signals
        self.budget = budget or TimeBudget(None, state, None, parts.accelerator)  # no budget: never spent
        train = parts.train
        self.every_steps = train.checkpoint_every_steps
        self.every_seconds = train.checkpoint_every_minutes * 60 if train.checkpoint_every_minutes else None
        self.agree_every = 1 if parts.accelerator.num_processes == 1 else 10
        self.last_write = time.monotonic()

    def _agreed(self, flags: list[bool]) -> list[bool]:
        accelerator = self.parts.accelerator
        if accelerator.num_processes == 1:
            return flags
        tensor = torch.tensor([float(f) for f in flags], device=accelerator.device)
        return [bool(v) for v in accelerator.reduce(tensor, reduction="sum").tolist()]

    def stop_requested(self) -> bool:
        return self._agreed([self.signals.requested is not None])[0]

    def after_step(self, epoch: int, batches_done: int, totals: torch.Tensor, seconds: float) -> bool:
        """Checkpoint when due (never weights that are no longer finite); raise ``RunInterrupted`` on a stop
        signal; return True when the time budget is spent (the epoch ends here)."""
        step = self.state.global_step
        if step % TimeBudget.CALIBRATION_STEPS == 0:  # the rate follows the machine's load as it changes
            self.budget.resize(step)
        by_steps = self.every_steps is not None and step % self.every_steps == 0
        if not by_steps and step % self.agree_every:
            return False
        timed = self.every_seconds is not None and time.monotonic() - self.last_write >= self.every_seconds
        timed, stop, spent = self._agreed([timed, self.signals.requested is not None, self.budget.spent()])
        if by_steps or timed or stop:
            if not all_finite(self.parts.accelerator, list(self.parts.model.parameters())):
                raise non_finite("weights", f"epoch {epoch + 1}, step {batches_done}", self.parts, self.run_dir)
            summed = self.parts.accelerator.reduce(totals.clone(), reduction="sum").tolist()
            self.state.place(epoch=epoch, batch=batches_done, partial_epoch={"totals": summed, "seconds": seconds},
                             elapsed_seconds=self.budget.elapsed(), schedule_steps=self.budget.total_steps())
            save_checkpoint(self.parts.accelerator, self.run_dir, self.state, self.parts.ema)
            self.last_write = time.monotonic()
        if stop:
            raise self.interrupted(f"epoch {epoch + 1}, step {batches_done}")
        return spent

    def interrupted(self, where: str) -> RunInterrupted:
        name = self.signals.requested.name if self.signals.requested is not None else "a signal on another process"
        code = 128 + int(self.signals.requested or signal.SIGTERM)
        return RunInterrupted(f"stopped by {name} at {where}: checkpoint written to {self.run_dir / 'checkpoint'}; "
                              f"rerun the same command with train.resume=true to continue exactly", code)


def train_one_epoch(parts: TrainingParts, epoch: int, state: TrainerState, checkpoints: StepCheckpoints) -> dict:
    """One pass over the train loader from ``state.batch`` (non-zero when resuming mid-epoch). A loss that is
    not finite stops the run before its backward pass, so no NaN reaches the weights (``NonFiniteLoss``)."""
    accelerator, model, train = parts.accelerator, parts.model, parts.train
    parts.train_loader.set_epoch(epoch)
    if hasattr(parts.train_loader.dataset, "set_epoch"):  # cached views; Accelerate skips it under several processes
        parts.train_loader.dataset.set_epoch(epoch)
    start_batch = state.batch
    loader = parts.train_loader
    if start_batch:  # a stream is read again from the epoch's start (its order is a function of seed and epoch)
        loader = loader.skipping(start_batch) if hasattr(loader, "skipping") else \
            accelerator.skip_first_batches(loader, start_batch)
    totals, seconds_before = _epoch_so_far(accelerator, state)
    generator = torch.Generator()
    set_train_mode(model)
    start = time.perf_counter()
    on_terminal = sys.stderr.isatty()  # a log file or a scheduler's output gets lines, not carriage-return frames
    progress = tqdm(loader, desc=f"epoch {epoch + 1}/{train.epochs}", leave=False, initial=start_batch,
                    total=len(parts.train_loader), disable=not (accelerator.is_local_main_process and on_terminal))
    for batch, (inputs, labels) in enumerate(progress, start=start_batch):
        seed = batch_seed(parts.seed, epoch, batch, accelerator.process_index)
        generator.manual_seed(seed)
        torch.manual_seed(seed + 1)  # dropout, drop path, mixup/cutmix and RandAugment draw from the global RNG
        inputs, targets = parts.preprocessor(inputs, labels, train=True, generator=generator)
        where = f"epoch {epoch + 1}, step {batch + 1} (optimiser step {state.global_step + 1})"
        logits, loss = _forward_backward_step(parts, inputs, targets, where, checkpoints.run_dir)
        hard_targets = targets.argmax(dim=1) if targets.dim() == 2 else targets
        correct = (logits.argmax(dim=1) == hard_targets).sum()
        totals += torch.stack([loss.detach().float() * labels.shape[0], correct.float(),
                               totals.new_tensor(labels.shape[0])])
        _show_progress(parts, progress, epoch, batch, loss, totals, on_terminal)
        if accelerator.sync_gradients:
            if parts.ema is not None:
                parts.ema.update_parameters(accelerator.unwrap_model(model))
            state.global_step += 1
            if checkpoints.after_step(epoch, batch + 1, totals, seconds_before + time.perf_counter() - start):
                state.budget_spent = True
                break
    summed = accelerator.reduce(totals, reduction="sum")
    state.images_seen += int(summed[2].item())
    seconds = seconds_before + time.perf_counter() - start
    return {"train_loss": (summed[0] / summed[2]).item(), "train_accuracy": (summed[1] / summed[2]).item(),
            "learning_rate": parts.scheduler.get_last_lr()[0], "epoch_seconds": seconds,
            "train_images_per_second": summed[2].item() / seconds}


def _forward_backward_step(parts: TrainingParts, inputs, targets: torch.Tensor, where: str,
                           run_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One micro-batch: forward, loss (checked finite before the backward pass), backward; the clip and the optimiser
    and scheduler steps take effect on a gradient-sync step (``accelerator.accumulate``). Returns (logits, loss)."""
    accelerator, model, train = parts.accelerator, parts.model, parts.train
    with accelerator.accumulate(model):
        logits = parts.forward(model, inputs)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=train.label_smoothing)
        if not all_finite(accelerator, [loss]):
            raise non_finite("loss", where, parts, run_dir)
        accelerator.backward(loss)
        if accelerator.sync_gradients and train.max_grad_norm is not None:
            accelerator.clip_grad_norm_(model.parameters(), train.max_grad_norm)
        parts.optimizer.step()
        parts.scheduler.step()
        parts.optimizer.zero_grad(set_to_none=True)
    return logits, loss


def _show_progress(parts: TrainingParts, progress: tqdm, epoch: int, batch: int, loss: torch.Tensor,
                   totals: torch.Tensor, on_terminal: bool) -> None:
    """On a terminal, the bar's loss, accuracy and LR every 10 batches; in a log file, a line every
    ``LOG_EVERY_BATCHES``."""
    accelerator, epochs = parts.accelerator, parts.train.epochs
    if accelerator.is_local_main_process and batch % 10 == 0:  # .item() waits for the device
        progress.set_postfix(loss=f"{loss.item():.3f}", acc=f"{(totals[1] / totals[2]).item():.3f}",
                             lr=f"{parts.scheduler.get_last_lr()[0]:.2e}")
    if not on_terminal and (batch + 1) % LOG_EVERY_BATCHES == 0:
        accelerator.print(f"epoch {epoch + 1}/{epochs} batch {batch + 1}/{len(parts.train_loader)}: "
                          f"loss {loss.item():.4f} lr {parts.scheduler.get_last_lr()[0]:.2e}")


def _epoch_so_far(accelerator: Accelerator, state: TrainerState) -> tuple[torch.Tensor, float]:
    """The running totals (loss sum, correct, seen) and seconds an epoch starts from: zeros, or on a mid-epoch
    resume the checkpoint's (summed over processes, so added back on the main process alone)."""
    totals = torch.zeros(3, device=accelerator.device)
    if state.partial_epoch is None:
        return totals, 0.0
    if accelerator.is_main_process:
        totals += torch.tensor(state.partial_epoch["totals"], device=accelerator.device)
    return totals, state.partial_epoch["seconds"]


def train_epochs(parts: TrainingParts, state: TrainerState, *, validate: Callable[[torch.nn.Module], dict],
                 image_processor, run_dir: Path) -> TrainerState:
    """Epochs from ``state``: train, ``validate(kept model)``, keep ``best/`` (by val accuracy) and ``last/``,
    checkpoint; early stopping; step checkpoints and stop signals. Returns the final trainer state."""
    accelerator, recipe = parts.accelerator, parts.train
    budget = TimeBudget(recipe.time_budget_minutes, state, parts.schedule_length, accelerator)
    with StopSignals() as signals:
        checkpoints = StepCheckpoints(parts, run_dir, state, signals, budget)
        for epoch in range(state.epoch, recipe.epochs):
            if state.stopped_early or state.budget_spent:
                break
            record = {"epoch": epoch + 1, **train_one_epoch(parts, epoch, state, checkpoints)}
            if not all_finite(accelerator, list(parts.model.parameters())):
                raise non_finite("weights", f"the end of epoch {epoch + 1}", parts, run_dir)
            val = validate(parts.kept_model())
            record.update(val_loss=val["loss"], val_accuracy=val["accuracy"], images_seen=state.images_seen,
                          elapsed_seconds=budget.elapsed())
            state.history.append(record)
            accelerator.print(f"epoch {epoch + 1}/{recipe.epochs}: train loss {record['train_loss']:.4f} "
                              f"acc {record['train_accuracy']:.4f} | val loss {val['loss']:.4f} "
                              f"acc {val['accuracy']:.4f} | {record['epoch_seconds']:.1f}s")
            if recipe.report_to != "none":
                accelerator.log({k: v for k, v in record.items() if k != "epoch"}, step=epoch + 1)
            _keep_model_dirs(parts, state, val["accuracy"], epoch, image_processor, run_dir)
            patience = recipe.early_stopping_patience
            if patience is not None and state.epochs_without_improvement >= patience:
                state.stopped_early = True
                accelerator.print(f"early stopping: no better val accuracy for {patience} epochs")
            if state.budget_spent:
                accelerator.print(f"time budget of {recipe.time_budget_minutes} minutes spent after "
                                  f"{state.global_step} optimiser steps ({state.images_seen:,} images)")
            budget.resize(state.global_step)
            state.place(epoch=epoch + 1, batch=0, partial_epoch=None, elapsed_seconds=budget.elapsed(),
                        schedule_steps=budget.total_steps())
            save_checkpoint(accelerator, run_dir, state, parts.ema)
            if checkpoints.stop_requested():
                raise checkpoints.interrupted(f"the end of epoch {epoch + 1}")
    return state


def _keep_model_dirs(parts: TrainingParts, state: TrainerState, val_accuracy: float, epoch: int, image_processor,
                     run_dir: Path) -> None:
    if val_accuracy > state.best_val_accuracy:
        state.best_val_accuracy, state.best_epoch, state.epochs_without_improvement = val_accuracy, epoch + 1, 0
        save_model_dir(parts.accelerator, parts.kept_model(), image_processor, run_dir / "best")
    else:
        state.epochs_without_improvement += 1
    save_model_dir(parts.accelerator, parts.kept_model(), image_processor, run_dir / "last")
