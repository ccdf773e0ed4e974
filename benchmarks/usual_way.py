"""The usual way: the plain-PyTorch reference loop both usual-way comparisons (``end_to_end``, ``cpu_budget``) train
with, as transformers' ``run_image_classification_no_trainer.py`` does: per-sample torchvision transforms through
``datasets.with_transform``, a ``DataLoader`` with workers per split, AdamW (decay on matrices) + cosine per step, a
plain Accelerate loop, validation each epoch. Under a time budget the schedule and the stop come from hfvision's own
``TimeBudget``."""

import math
import time

import torch
from accelerate import Accelerator
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader
from torchvision import transforms as T

from hfvision.training.optim import ScheduleLength, parameter_groups
from hfvision.training.state import TrainerState
from hfvision.training.trainer import TimeBudget


def per_sample_transforms(image_size: int, mean, std, crop_padding: int, flip: bool) -> tuple:
    """(train, eval) torchvision transforms of one PIL image: [random crop, flip,] to tensor, normalise."""
    normalize = T.Normalize(mean, std)
    augment = ([T.RandomCrop(image_size, padding=crop_padding)] if crop_padding else []) + (
        [T.RandomHorizontalFlip()] if flip else [])
    return T.Compose([*augment, T.ToTensor(), normalize]), T.Compose([T.ToTensor(), normalize])


def per_sample_loaders(splits, image_column: str, label_column: str, workers: int, batch_size: int,
                       eval_batch_size: int, transforms: tuple) -> dict:
    """A ``DataLoader`` per split (train shuffled) over ``datasets.with_transform`` with the (train, eval)
    ``transforms`` per PIL image and a stacking collate."""
    train_transform, eval_transform = transforms

    def with_pixels(transform):
        def apply(batch):
            batch["pixel_values"] = [transform(image.convert("RGB")) for image in batch[image_column]]
            return batch
        return apply

    def collate(examples):
        return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]),
                "labels": torch.tensor([e[label_column] for e in examples])}

    return {name: DataLoader(splits[name].with_transform(with_pixels(train_transform if name == "train"
                                                                     else eval_transform)),
                             shuffle=name == "train", collate_fn=collate, num_workers=workers,
                             batch_size=batch_size if name == "train" else eval_batch_size)
            for name in ("train", "validation", "test")}


def evaluate(model, loader, accelerator: Accelerator) -> dict:
    """Mean loss, accuracy, and the predictions and labels of every image in ``loader``."""
    model.eval()
    loss_sum, predictions, labels = 0.0, [], []
    with torch.no_grad():
        for batch in loader:
            output = model(**batch)
            loss_sum += output.loss.item() * len(batch["labels"])
            batch_predictions, batch_labels = accelerator.gather_for_metrics((output.logits.argmax(-1),
                                                                              batch["labels"]))
            predictions += batch_predictions.tolist()
            labels += batch_labels.tolist()
    correct = sum(p == t for p, t in zip(predictions, labels))
    return {"loss": loss_sum / len(labels), "accuracy": correct / len(labels), "predictions": predictions,
            "labels": labels}


def train_epoch(parts: tuple, loader, budget: TimeBudget, steps_done: int) -> dict:
    """One pass over ``loader``, or up to the step at which the budget is spent: train loss and accuracy, images,
    steps, and whether the budget stopped it.
    The schedule is resized once, after ``TimeBudget.CALIBRATION_STEPS`` steps (hfvision's first resize): the
    estimate a person makes from the first minute."""
    model, optimizer, scheduler, accelerator = parts
    model.train()
    loss_sum = correct = seen = 0
    spent = False  # an empty loader
    for batch in loader:
        output = model(**batch)
        accelerator.backward(output.loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        steps_done, seen = steps_done + 1, seen + len(batch["labels"])
        loss_sum += output.loss.detach() * len(batch["labels"])  # summed on the device: no sync per step
        correct += (output.logits.argmax(-1) == batch["labels"]).sum()
        if steps_done == TimeBudget.CALIBRATION_STEPS:
            budget.resize(steps_done)
        spent = budget.spent()
        if spent:
            break
    return {"train_loss": float(loss_sum) / seen, "train_accuracy": int(correct) / seen, "images": seen,
            "steps": steps_done, "budget_spent": spent}


def train_usual_way(model, loaders: dict, accelerator: Accelerator, *, learning_rate: float, weight_decay: float,
                    epochs: int, budget_minutes: float | None = None) -> dict:
    """Train ``model`` for ``epochs`` (or until ``budget_minutes`` of training and validation are spent), then test:
    the per-epoch history (an hfvision run's history fields, FLOPs aside), each epoch's training-loop seconds, the test
    evaluation, optimiser steps, images seen, seconds and whether the budget was spent."""
    optimizer = torch.optim.AdamW(parameter_groups(model, weight_decay), lr=learning_rate)
    length = ScheduleLength(epochs * len(loaders["train"]))  # transformers' get_scheduler("cosine"), no warmup
    scheduler = LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step / length.total_steps, 1.0))))
    model, optimizer, train_loader, val_loader, test_loader, scheduler = accelerator.prepare(
        model, optimizer, loaders["train"], loaders["validation"], loaders["test"], scheduler)
    budget = TimeBudget(budget_minutes, TrainerState(), length, accelerator)
    history, epoch_seconds, steps, images = [], [], 0, 0
    for epoch in range(1, epochs + 1):
        epoch_start = time.perf_counter()
        trained = train_epoch((model, optimizer, scheduler, accelerator), train_loader, budget, steps)
        epoch_seconds.append(time.perf_counter() - epoch_start)
        steps, images = trained["steps"], images + trained["images"]
        validation = evaluate(model, val_loader, accelerator)
        history.append({"epoch": epoch, "train_loss": trained["train_loss"],
                        "train_accuracy": trained["train_accuracy"], "val_loss": validation["loss"],
                        "val_accuracy": validation["accuracy"], "images_seen": images,
                        "elapsed_seconds": budget.elapsed()})
        print(f"usual way epoch {epoch}: val acc {validation['accuracy']:.4f} at "
              f"{history[-1]['elapsed_seconds'] / 60:.1f} min", flush=True)
        if trained["budget_spent"]:
            break
    seconds = budget.elapsed()
    return {"history": history, "epoch_seconds": epoch_seconds, "test": evaluate(model, test_loader, accelerator),
            "optimizer_steps": steps, "images_seen": images, "seconds": seconds,
            "budget_spent": trained["budget_spent"]}
