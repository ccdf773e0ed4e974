"""Every recipe option has a test that fails when the option is ignored or hard-coded (issue 14).

Two tiny runs of the real pipeline (``fit``, marked slow: a few CPU seconds each), A and B, set the options to different values. A spy around the
trainer records every optimiser step (weights before and after, gradients before and after clipping, learning
rates), every training batch (inputs, logits, targets), every evaluation loader and every checkpoint write, and
the tests compare what happened with hand computations: the optimiser update rules, the schedule, clipping, the
EMA, the label-smoothed loss, batch and split sizes, the input spec, checkpoints and trackers.
Unit tests cover what a run cannot show cheaply: accumulation equals a large batch, the augmentation draws,
the mixup/cutmix lambda distributions, early stopping, time-based checkpoints, mixed precision.
tests/MUTATIONS.md lists the hand mutations of the library that these tests were checked to catch.
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from conftest import REPO, tiny_recipe_overrides
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision import transforms as v1_transforms
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from hfvision import pipeline
from hfvision.accelerator import make_accelerator
from hfvision.data.sources import load_raw, split_dataset
from hfvision.data.synthetic import CLASSES
from hfvision.data.transforms import BatchPreprocessor, crop_and_resize_back, random_resized_crop_box
from hfvision.errors import RecipeError
from hfvision.evaluation.profile import inference_latency
from hfvision.models.factory import build_model, resolve_input_spec
from hfvision.recipe import (
    AugmentRecipe,
    DataRecipe,
    ModelRecipe,
    Recipe,
    TrainRecipe,
    load_recipe,
)
from hfvision.spec import InputSpec
from hfvision.training import trainer
from hfvision.training.feature_cache import FeatureBatches
from hfvision.training.optim import build_optimizer, build_scheduler, lr_multiplier
from hfvision.training.state import TrainerState
from hfvision.training.trainer import (
    StepCheckpoints,
    StopSignals,
    TrainingParts,
    make_ema,
    steps_per_epoch,
)

TINY_VIT = {"patch_size": 4, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 64}

# Two runs that set every option to a different value. ``expect`` holds what each run must do, worked out by hand.
RUNS = {
    "A": {
        "settings": {
            "seed": 7, "model.config": TINY_VIT,
            "data.image_size": 16, "data.mean": [0.4, 0.5, 0.6], "data.std": [0.2, 0.25, 0.3],
            "data.max_train_samples": 96, "data.max_eval_samples": 48, "data.augment.mixup_alpha": 0.4,
            "train.epochs": 2, "train.batch_size": 32, "train.learning_rate": 0.003, "train.optimizer": "adamw",
            "train.weight_decay": 0.05, "train.scheduler": "cosine", "train.warmup_epochs": 1,
            "train.max_grad_norm": 0.05, "train.label_smoothing": 0.2, "train.ema_decay": 0.5,
            "train.checkpoint_every_steps": 2, "train.report_to": "tensorboard",
            "eval.batch_size": 20, "eval.latency_batch_size": 5, "eval.explain": True,
        },
        "expect": {
            # 96 images / 32 = 3 steps per epoch, 6 in all; warmup 1 epoch = 3 steps, then cosine over 3 steps
            "lr_factors": [1 / 3, 2 / 3, 1.0, 1.0, 0.75, 0.25],
            "epoch_end_lr_factors": [1.0, 0.0],
            "train_batches": [32] * 6,
            "sizes": {"train": 96, "validation": 48, "test": 48},
            "eval_batches": [20, 20, 8],  # 48 validation (and test) images in batches of 20
            "step_checkpoints": [2, 4, 6],
            "spec": InputSpec(16, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)),
        },
    },
    "B": {
        "settings": {
            "seed": 42, "model.config": {**TINY_VIT, "image_size": 24},
            "data.val_fraction": 0.02, "data.max_train_samples": 120, "data.max_eval_samples": None,
            "data.augment.random_crop_padding": 0, "data.augment.horizontal_flip": False,
            "train.epochs": 2, "train.batch_size": 40, "train.learning_rate": 0.05, "train.optimizer": "sgd",
            "train.momentum": 0.5, "train.weight_decay": 0.01, "train.scheduler": "step",
            "train.step_size_epochs": 1, "train.step_gamma": 0.5, "train.warmup_epochs": 0,
            "train.gradient_accumulation_steps": 2, "train.max_grad_norm": None, "train.label_smoothing": 0.0, "train.ema_decay": None,
            "train.checkpoint_every_steps": None, "train.report_to": "none",
            "eval.batch_size": 256, "eval.latency_batch_size": 8, "eval.explain": False,
        },
        "expect": {
            # 120 / 40 = 3 batches per epoch, accumulated 2 + 1: 2 optimiser steps per epoch (the last one at the
            # end of the loader); the step schedule halves the rate after each epoch
            "lr_factors": [1.0, 1.0, 0.5, 0.5],
            "epoch_end_lr_factors": [0.5, 0.25],
            "train_batches": [40] * 6,
            # synthetic has 3000 train images: 2% (60) for validation; the 600 test images, all of them
            "sizes": {"train": 120, "validation": 60, "test": 600},
            "eval_batches": [60],
            "step_checkpoints": [],
            "spec": InputSpec(24, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        },
    },
}


@dataclass
class Trace:
    """What the spy saw during one ``fit``."""

    recipe: Recipe
    run_dir: Path
    metrics: dict = None
    parts: TrainingParts = None
    initial: dict = None  # name -> weights when training starts
    steps: list = field(default_factory=list)  # one dict per optimiser step
    batches: list = field(default_factory=list)  # (model inputs, logits, targets) per training batch
    evaluations: list = field(default_factory=list)  # (batch sizes, first uint8 batch, preprocessor) per evaluate
    checkpoints: list = field(default_factory=list)  # (global step, whether inside an epoch) per checkpoint write


def _named(model) -> dict:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def traced_fit(run_dir: Path, settings: dict) -> Trace:
    """``fit`` with the spy installed around ``train_epochs``, ``evaluate_model`` and ``save_checkpoint``."""
    recipe = load_recipe(None, tiny_recipe_overrides(run_dir, **settings))
    trace = Trace(recipe, run_dir)
    real_train, real_evaluate, real_save = pipeline.train_epochs, pipeline.evaluate_model, trainer.save_checkpoint

    def spy_train(parts, state, **kwargs):
        trace.parts = parts
        model = parts.accelerator.unwrap_model(parts.model)
        trace.initial = _named(model)
        before_clip = {}
        for name, param in model.named_parameters():
            param.register_post_accumulate_grad_hook(
                lambda p, name=name: before_clip.__setitem__(name, p.grad.detach().clone()))

        def before_step(optimizer, args, kwargs):
            trace.steps.append({"lr": [group["lr"] for group in optimizer.param_groups], "before": _named(model),
                                "grad_before_clip": dict(before_clip),
                                "grad": {n: p.grad.detach().clone() for n, p in model.named_parameters()}})
            before_clip.clear()

        def after_step(optimizer, args, kwargs):
            trace.steps[-1]["after"] = _named(model)

        parts.optimizer.optimizer.register_step_pre_hook(before_step)
        parts.optimizer.optimizer.register_step_post_hook(after_step)
        preprocessor, forward, targets = parts.preprocessor, parts.forward, []

        def recording_preprocessor(images, labels, train, generator=None):
            inputs, batch_targets = preprocessor(images, labels, train=train, generator=generator)
            targets.append(batch_targets)
            return inputs, batch_targets

        def recording_forward(model, inputs):
            logits = forward(model, inputs)
            trace.batches.append((inputs.detach().clone(), logits.detach().float(), targets.pop()))
            return logits

        parts.preprocessor, parts.forward = recording_preprocessor, recording_forward
        return real_train(parts, state, **kwargs)

    def spy_evaluate(model, loader, preprocessor, *args):
        sizes = [len(labels) for _, labels in loader]
        trace.evaluations.append((sizes, next(iter(loader))[0], preprocessor))
        return real_evaluate(model, loader, preprocessor, *args)

    def spy_save_checkpoint(accelerator, run_dir, state, ema=None):
        trace.checkpoints.append((state.global_step, state.partial_epoch is not None))
        return real_save(accelerator, run_dir, state, ema)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "train_epochs", spy_train)
        patch.setattr(pipeline, "evaluate_model", spy_evaluate)
        patch.setattr(trainer, "save_checkpoint", spy_save_checkpoint)
        trace.metrics = pipeline.fit(recipe)
    return trace


@pytest.fixture(scope="module", params=list(RUNS))
def run(request, tmp_path_factory):
    """One traced run per entry of RUNS (module scope: every test below shares the two trainings)."""
    spec = RUNS[request.param]
    trace = traced_fit(tmp_path_factory.mktemp(f"run_{request.param}") / "run", spec["settings"])
    trace.expect = spec["expect"]
    return trace


# ---------------------------------------------------------------------------------------------- hand references


class HandOptimizer:
    """The update rules of AdamW, Adam (L2 decay in the gradient) and SGD (Nesterov momentum when momentum > 0)
    as torch documents them, in float64, with decay on matrices and kernels only, minus ``no_weight_decay()``."""

    def __init__(self, train: TrainRecipe, decayed: set[str], betas=(0.9, 0.999), eps=1e-8):
        self.train, self.decayed, self.betas, self.eps = train, decayed, betas, eps
        self.t, self.m, self.v, self.buffer = 0, {}, {}, {}

    def step(self, weights: dict, grads: dict, lr: float) -> dict:
        self.t += 1
        out = {}
        for name, p in weights.items():
            p, g = p.double(), grads[name].double()
            wd = self.train.weight_decay if name in self.decayed else 0.0
            if self.train.optimizer == "adamw":
                p = p * (1 - lr * wd)
            else:
                g = g + wd * p
            if self.train.optimizer in ("adamw", "adam"):
                b1, b2 = self.betas
                self.m[name] = b1 * self.m.get(name, 0) + (1 - b1) * g
                self.v[name] = b2 * self.v.get(name, 0) + (1 - b2) * g * g
                m_hat, v_hat = self.m[name] / (1 - b1 ** self.t), self.v[name] / (1 - b2 ** self.t)
                out[name] = p - lr * m_hat / (v_hat.sqrt() + self.eps)
            else:
                mu = self.train.momentum
                if mu > 0:
                    self.buffer[name] = g if self.t == 1 else mu * self.buffer[name] + g
                    g = g + mu * self.buffer[name]
                out[name] = p - lr * g
        return out


def decayed_names(model) -> set[str]:
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    return {n for n, p in model.named_parameters() if p.dim() >= 2 and n not in skip}


def smoothed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, eps: float) -> torch.Tensor:
    """Mean cross-entropy against ``(1 - eps) * targets + eps / classes`` (targets: class ids or soft rows)."""
    classes = logits.shape[1]
    if targets.dim() == 1:
        targets = F.one_hot(targets, classes).double()
    smoothed = (1 - eps) * targets.double() + eps / classes
    return -(smoothed * logits.double().log_softmax(dim=1)).sum(dim=1).mean()


def total_norm(grads: dict) -> float:
    return math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads.values()))


# ---------------------------------------------------------------------------------------------- the two runs


@pytest.mark.slow
def test_run_lr_at_every_step_is_the_scheduled_one(run):
    train = run.recipe.train
    assert len(run.steps) == len(run.expect["lr_factors"])
    for step, factor in zip(run.steps, run.expect["lr_factors"]):
        assert step["lr"] == pytest.approx([train.learning_rate * factor] * 2)
    # the history keeps the rate after each epoch's last step: the one the next step would use
    assert [h["learning_rate"] for h in run.metrics["history"]] == pytest.approx(
        [train.learning_rate * f for f in run.expect["epoch_end_lr_factors"]])


@pytest.mark.slow
def test_run_optimizer_updates_follow_the_hand_rule(run):
    """Optimizer, learning rate, momentum and weight decay: every step's weights from the hand update rule."""
    train = run.recipe.train
    model = run.parts.accelerator.unwrap_model(run.parts.model)
    reference = HandOptimizer(train, decayed_names(model))
    for step, factor in zip(run.steps, run.expect["lr_factors"]):
        expected = reference.step(step["before"], step["grad"], train.learning_rate * factor)
        for name, weights in step["after"].items():
            torch.testing.assert_close(weights.double(), expected[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.slow
def test_run_clipping_bounds_the_applied_gradient_norm(run):
    max_norm = run.recipe.train.max_grad_norm
    clipped = 0
    for step in run.steps:
        before, applied = total_norm(step["grad_before_clip"]), total_norm(step["grad"])
        expected = before if max_norm is None else before * min(1.0, max_norm / (before + 1e-6))
        assert applied == pytest.approx(expected, rel=1e-5)
        clipped += max_norm is not None and before > max_norm
    assert clipped >= (len(run.steps) // 2 if max_norm is not None else 0)  # the test would see a missing clip


@pytest.mark.slow
def test_run_kept_weights_are_the_hand_computed_ema(run):
    """torch's ``AveragedModel`` copies the weights at the first update, then averages: e = d * e + (1 - d) * w."""
    decay = run.recipe.train.ema_decay
    ema = dict(run.steps[0]["after"])
    for step in run.steps[1:]:
        ema = {n: step["after"][n] if decay is None else decay * ema[n] + (1 - decay) * step["after"][n] for n in ema}
    kept = _named(run.parts.kept_model())
    saved = load_file(run.run_dir / "last" / "model.safetensors")
    for name, weights in ema.items():
        torch.testing.assert_close(kept[name], weights, rtol=1e-5, atol=1e-7, msg=name)
        torch.testing.assert_close(saved[name], weights, rtol=1e-5, atol=1e-7, msg=name)
    assert (run.parts.ema is None) == (decay is None)


@pytest.mark.slow
def test_run_train_loss_is_the_label_smoothed_cross_entropy(run):
    eps = run.recipe.train.label_smoothing
    per_epoch = len(run.batches) // run.recipe.train.epochs
    for epoch, record in enumerate(run.metrics["history"]):
        batches = run.batches[epoch * per_epoch:(epoch + 1) * per_epoch]
        losses = [smoothed_cross_entropy(logits, targets, eps) * len(logits) for _, logits, targets in batches]
        expected = sum(losses) / sum(len(logits) for _, logits, _ in batches)
        assert record["train_loss"] == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.slow
def test_run_mixup_targets_follow_the_alpha(run):
    mixing = run.recipe.data.augment.mixup_alpha > 0
    for inputs, _, targets in run.batches:
        assert targets.dim() == (2 if mixing else 1)
        if mixing:
            torch.testing.assert_close(targets.sum(1), torch.ones(len(targets)))
            assert ((targets > 0).sum(1) <= 2).all()  # each row mixes its own label with one other


@pytest.mark.slow
def test_run_epochs_batches_and_split_sizes(run):
    assert len(run.metrics["history"]) == run.recipe.train.epochs
    assert [len(inputs) for inputs, _, _ in run.batches] == run.expect["train_batches"]
    data = run.metrics["data"]
    assert {k: data[k] for k in ("train", "validation", "test", "skipped_images", "skipped")} == {
        **run.expect["sizes"], "skipped_images": 0, "skipped": []}
    stores = data["stores"]  # each split's store as metrics.json records it: synthetic 32 px fitted to the input
    side = min(32, run.metrics["model"]["image_size"])
    assert {name: (s["images"], s["side"]) for name, s in stores.items()} == {
        name: (data[name], side) for name in ("train", "validation", "test")}
    assert run.metrics["timing"]["data_seconds"] == data["seconds"] > 0
    val_batches, test_batches = run.evaluations[0][0], run.evaluations[-1][0]
    assert val_batches == run.expect["eval_batches"]
    assert all(size <= run.recipe.eval.batch_size for size in test_batches)
    assert sum(test_batches) == run.expect["sizes"]["test"]
    assert len(test_batches) == math.ceil(run.expect["sizes"]["test"] / run.recipe.eval.batch_size)


@pytest.mark.slow
def test_run_inputs_follow_the_input_spec(run):
    spec = run.expect["spec"]
    for sizes, images, preprocessor in run.evaluations:
        assert preprocessor.spec == spec
        pixels, _ = preprocessor(images, torch.zeros(len(images), dtype=torch.long), train=False)
        resized = TF.resize(images.float() / 255, [spec.image_size] * 2, antialias=True)
        expected = (resized - torch.tensor(spec.mean)[:, None, None]) / torch.tensor(spec.std)[:, None, None]
        torch.testing.assert_close(pixels, expected, rtol=1e-5, atol=1e-5)
    assert {tuple(inputs.shape[1:]) for inputs, _, _ in run.batches} == {(3, spec.image_size, spec.image_size)}
    saved = json.loads((run.run_dir / "best" / "preprocessor_config.json").read_text())
    assert (saved["size"]["height"], saved["image_mean"], saved["image_std"]) == (
        spec.image_size, list(spec.mean), list(spec.std))


@pytest.mark.slow
def test_run_starts_from_the_weights_the_seed_gives(run):
    recipe = run.recipe
    set_seed(recipe.seed)
    model = build_model(recipe.model, resolve_input_spec(recipe.model, recipe.data), list(CLASSES)).model
    for name, weights in _named(model).items():
        torch.testing.assert_close(run.initial[name], weights, rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_run_writes_step_checkpoints_at_the_asked_steps(run):
    assert [step for step, inside_epoch in run.checkpoints if inside_epoch] == run.expect["step_checkpoints"]
    steps = len(run.steps) // run.recipe.train.epochs
    assert [step for step, inside_epoch in run.checkpoints if not inside_epoch] == [
        steps * (epoch + 1) for epoch in range(run.recipe.train.epochs)]


@pytest.mark.slow
def test_run_trackers_and_explain_output(run):
    logs = run.run_dir / "logs" / "hfvision"
    if run.recipe.train.report_to == "tensorboard":
        from tensorboard.backend.event_processing.event_accumulator import (
            EventAccumulator,
        )

        events = EventAccumulator(str(logs))
        events.Reload()
        logged = events.Scalars("train_loss")
        assert [e.step for e in logged] == [h["epoch"] for h in run.metrics["history"]]
        assert [e.value for e in logged] == pytest.approx([h["train_loss"] for h in run.metrics["history"]])
    else:
        assert not logs.exists()
    assert (run.run_dir / "gradcam_per_class.png").exists() == run.recipe.eval.explain


@pytest.mark.slow
def test_run_latency_is_measured_at_the_asked_batch_size(run):
    timing = run.metrics["timing"]
    assert timing["latency_batch_size"] == run.recipe.eval.latency_batch_size
    assert timing["images_per_second"] == pytest.approx(
        run.recipe.eval.latency_batch_size / (timing["inference_ms_per_batch"] / 1000))


# ---------------------------------------------------------------------------------------------- optimiser, schedule


class TinyNet(nn.Module):
    """A 2-layer classifier with the HF call shape (``pixel_values=``) on 12 features, 3 classes."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(12, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, pixel_values):
        return self.out(torch.tanh(self.hidden(pixel_values.flatten(1))))


@pytest.mark.parametrize("train", [
    TrainRecipe(optimizer="adamw", learning_rate=0.1, weight_decay=0.3),
    TrainRecipe(optimizer="adam", learning_rate=0.1, weight_decay=0.3),
    TrainRecipe(optimizer="sgd", learning_rate=0.1, weight_decay=0.3, momentum=0.5),
    TrainRecipe(optimizer="sgd", learning_rate=0.2, weight_decay=0.0, momentum=0.0),
], ids=["adamw", "adam", "sgd_momentum", "sgd_plain"])
def test_optimizer_steps_follow_the_hand_rule(train):
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = build_optimizer(model, train)
    reference = HandOptimizer(train, {"hidden.weight", "out.weight"})
    for _ in range(3):
        before = _named(model)
        grads = {name: torch.randn_like(p) for name, p in model.named_parameters()}
        for name, p in model.named_parameters():
            p.grad = grads[name].clone()
        optimizer.step()
        expected = reference.step(before, grads, train.learning_rate)
        for name, weights in _named(model).items():
            torch.testing.assert_close(weights.double(), expected[name], rtol=1e-6, atol=1e-7, msg=name)


# Multipliers worked out by hand, 10 optimiser steps per epoch, 4 epochs.
SCHEDULES = {
    # warmup 1 epoch: (k + 1) / 10; then cosine over the remaining 30 steps: 0.5 * (1 + cos(pi * (k - 10) / 30))
    "cosine_warmup": (TrainRecipe(epochs=4, scheduler="cosine", warmup_epochs=1),
                      {0: 0.1, 4: 0.5, 9: 1.0, 10: 1.0, 25: 0.5, 30: 0.25, 39: 0.5 * (1 + math.cos(math.pi * 29 / 30))}),
    "cosine": (TrainRecipe(epochs=4, scheduler="cosine", warmup_epochs=0),
               {0: 1.0, 20: 0.5, 10: 0.5 * (1 + math.cos(math.pi / 4))}),
    # step every 2 epochs by 0.1 (the defaults step_size_epochs=10, step_gamma=0.1 would give 1.0 throughout)
    "step": (TrainRecipe(epochs=4, scheduler="step", step_size_epochs=2, step_gamma=0.1),
             {0: 1.0, 19: 1.0, 20: 0.1, 39: 0.1}),
    "step_gamma": (TrainRecipe(epochs=4, scheduler="step", step_size_epochs=1, step_gamma=0.5),
                   {0: 1.0, 9: 1.0, 10: 0.5, 25: 0.25, 39: 0.125}),
    # half an epoch of warmup (5 steps), then step by 0.3 every epoch
    "step_warmup": (TrainRecipe(epochs=4, scheduler="step", step_size_epochs=1, step_gamma=0.3, warmup_epochs=0.5),
                    {0: 0.2, 4: 1.0, 5: 1.0, 10: 0.3, 20: 0.09}),
    "constant": (TrainRecipe(epochs=4, scheduler="constant"), {0: 1.0, 17: 1.0, 39: 1.0}),
    "constant_warmup": (TrainRecipe(epochs=4, scheduler="constant", warmup_epochs=2),
                        {0: 0.05, 9: 0.5, 19: 1.0, 20: 1.0, 39: 1.0}),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedule_gives_the_hand_computed_rate(name):
    train, expected = SCHEDULES[name]
    train.learning_rate = 0.2
    for step, factor in expected.items():
        assert lr_multiplier(step, train=train, steps_per_epoch=10) == pytest.approx(factor), step
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=train.learning_rate)
    scheduler = build_scheduler(optimizer, train, steps_per_epoch=10)
    rates = []
    for _ in range(40):  # the rate each optimiser step uses
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    for step, factor in expected.items():
        assert rates[step] == pytest.approx(0.2 * factor), step


# ---------------------------------------------------------------------------------------------- the loop on a tiny net


def tiny_data(count=24, seed=0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(count, 12, generator=generator), torch.randint(0, 3, (count,), generator=generator))


def train_tiny(run_dir: Path, train: TrainRecipe, data: TensorDataset) -> tuple[TrainingParts, list[dict]]:
    """The pipeline's wiring (``_make_accelerator``, optimiser, schedule, EMA, ``prepare``) around ``TinyNet``,
    then ``train_one_epoch`` per epoch; returns the parts and each optimiser step's weights after it."""
    recipe = Recipe(train=train, output_dir=str(run_dir))
    accelerator = pipeline._make_accelerator(recipe, run_dir)
    torch.manual_seed(0)
    model = TinyNet()
    loader = DataLoader(data, batch_size=train.batch_size, shuffle=False)
    optimizer = build_optimizer(model, train)
    scheduler = build_scheduler(optimizer, train, steps_per_epoch(len(loader), train.gradient_accumulation_steps))
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    ema = make_ema(accelerator.unwrap_model(model), train.ema_decay) if train.ema_decay is not None else None
    parts = TrainingParts(accelerator, model, optimizer, scheduler, loader, FeatureBatches(), train, 0, ema)
    after_steps = []
    optimizer.optimizer.register_step_post_hook(lambda *_: after_steps.append(_named(model)))
    state = TrainerState()
    with StopSignals() as signals:
        checkpoints = StepCheckpoints(parts, run_dir, state, signals)
        for epoch in range(train.epochs):
            trainer.train_one_epoch(parts, epoch, state, checkpoints)
    assert state.global_step == len(after_steps)
    return parts, after_steps


def test_accumulation_equals_one_large_batch(tmp_path):
    """3 micro-batches of 4 with accumulation 3 = batches of 12: same weights, same schedule, same clipping."""
    common = dict(epochs=2, optimizer="sgd", momentum=0.0, weight_decay=0.0, learning_rate=0.5, scheduler="cosine",
                  warmup_epochs=0.5, max_grad_norm=0.3, report_to="none")
    _, steps = train_tiny(tmp_path / "a", TrainRecipe(batch_size=4, gradient_accumulation_steps=3, **common),
                                    tiny_data())
    _, large_steps = train_tiny(tmp_path / "b", TrainRecipe(batch_size=12, **common), tiny_data())
    assert len(steps) == len(large_steps) == 4
    for after, large_after in zip(steps, large_steps):
        for name, weights in large_after.items():
            torch.testing.assert_close(after[name], weights, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("decay", [0.9, 0.5])
def test_ema_is_the_decay_weighted_average_of_the_step_weights(tmp_path, decay):
    train = TrainRecipe(epochs=1, batch_size=4, learning_rate=0.3, optimizer="sgd", momentum=0.0, ema_decay=decay,
                        report_to="none")
    parts, steps = train_tiny(tmp_path, train, tiny_data())
    ema = steps[0]  # AveragedModel copies the weights at its first update
    for after in steps[1:]:
        ema = {name: decay * ema[name] + (1 - decay) * after[name] for name in ema}
    for name, weights in _named(parts.kept_model()).items():
        torch.testing.assert_close(weights, ema[name], rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("patience,epochs_run,best_epoch", [(None, 9, 9), (1, 3, 2), (2, 4, 2), (3, 8, 5)])
def test_early_stopping_stops_after_the_right_epoch(tmp_path, monkeypatch, patience, epochs_run, best_epoch):
    # validation accuracies per epoch; epochs without a better one after each: 0 0 1 2 0 1 2 3 0
    accuracies = iter([0.5, 0.6, 0.6, 0.55, 0.7, 0.7, 0.7, 0.7, 0.9])
    monkeypatch.setattr(trainer, "train_one_epoch", lambda *_: {"train_loss": 0.0, "train_accuracy": 0.0,
                                                                 "learning_rate": 0.0, "epoch_seconds": 0.0})
    monkeypatch.setattr(trainer, "save_checkpoint", lambda *_: None)
    monkeypatch.setattr(trainer, "save_model_dir", lambda *_: None)
    train = TrainRecipe(epochs=9, early_stopping_patience=patience, report_to="none")
    parts = TrainingParts(make_accelerator(), nn.Linear(1, 1), None, None, None, None, train, 0)
    state = trainer.train_epochs(parts, TrainerState(), validate=lambda model: {"loss": 0.0, "accuracy": next(accuracies)},
                          image_processor=None, run_dir=tmp_path)
    assert len(state.history) == epochs_run
    assert state.stopped_early == (patience is not None)
    assert state.best_epoch == best_epoch


@pytest.mark.parametrize("every_steps,every_minutes,written", [
    (None, None, []),
    (3, None, [3, 6, 9]),
    (4, None, [4, 8]),
    (None, 0.5, [2, 4, 6, 8, 10]),  # 20 s per step: 30 s have passed at every second step
    (None, 1.0, [3, 6, 9]),
])
def test_step_checkpoints_every_n_steps_or_minutes(tmp_path, monkeypatch, every_steps, every_minutes, written):
    clock = iter(range(0, 1000, 20))
    monkeypatch.setattr(trainer.time, "monotonic", lambda: next(clock))
    saved = []
    monkeypatch.setattr(trainer, "save_checkpoint", lambda accelerator, run_dir, state, ema=None: saved.append(state.global_step))
    train = TrainRecipe(checkpoint_every_steps=every_steps, checkpoint_every_minutes=every_minutes)
    parts = TrainingParts(make_accelerator(), nn.Linear(1, 1), None, None, None, None, train, 0)
    state = TrainerState()
    with StopSignals() as signals:
        checkpoints = StepCheckpoints(parts, tmp_path, state, signals)  # reads the clock once: t = 0
        for step in range(1, 11):
            state.global_step = step
            checkpoints.after_step(0, step, torch.zeros(3), 0.0)
    assert saved == written


@pytest.mark.parametrize("precision,dtype", [("no", torch.float32), ("bf16", torch.bfloat16)])
def test_mixed_precision_runs_the_forward_in_that_precision(tmp_path, precision, dtype):
    recipe = Recipe(train=TrainRecipe(mixed_precision=precision, report_to="none"), output_dir=str(tmp_path))
    accelerator = pipeline._make_accelerator(recipe, tmp_path)
    model = accelerator.prepare(TinyNet())
    seen = []
    model.hidden.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    model(torch.randn(2, 12))  # Accelerate hands the logits back in float32 either way
    assert seen == [dtype]


def test_a_bf16_run_with_eval_explain_finishes_and_hands_back_a_float32_model(tmp_path, monkeypatch):
    """The default eval.explain after bf16 training: the Grad-CAM grid of best/ is drawn (it once met bf16 maps and
    stopped the run after training), and latency, FLOPs and the maps see the model as from_pretrained loads it."""
    from hfvision.explain import api

    seen = {}
    per_class_grid = api.per_class_grid

    def spy(model, *args, **kwargs):
        seen["dtypes"] = {p.dtype for p in model.parameters()}
        seen["output"] = model(pixel_values=torch.zeros(1, 3, 16, 16)).logits.dtype
        seen["hidden"] = []
        hook = next(m for m in model.modules() if isinstance(m, nn.Linear)).register_forward_hook(
            lambda module, args, output: seen["hidden"].append(output.dtype))
        model(pixel_values=torch.zeros(1, 3, 16, 16))
        hook.remove()
        return per_class_grid(model, *args, **kwargs)

    monkeypatch.setattr(pipeline, "per_class_grid", spy)
    out = tmp_path / "run"
    pipeline.fit(load_recipe(REPO / "recipes" / "quickstart.yaml", tiny_recipe_overrides(out, **{
        "model.config": {**TINY_VIT, "image_size": 16}, "data.max_train_samples": 64, "data.max_eval_samples": 32,
        "train.mixed_precision": "bf16", "eval.explain": True})))
    assert (out / "gradcam_per_class.png").stat().st_size > 0
    assert seen == {"dtypes": {torch.float32}, "output": torch.float32, "hidden": [torch.float32]}


def test_latency_is_timed_on_batches_of_the_asked_size():
    shapes = []

    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 2)

        def forward(self, pixel_values):
            shapes.append(tuple(pixel_values.shape))
            return self.linear(pixel_values.mean(dim=(2, 3)))

    timing = inference_latency(Recorder(), 12, batch_size=5, warmup=1, iterations=2)
    assert shapes == [(5, 3, 12, 12)] * 3 and timing["latency_batch_size"] == 5


# ---------------------------------------------------------------------------------------------- augmentation


def distinct_images(count=8, size=8) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    return torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)


IDENTITY = InputSpec(8, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # pixels / 255, no resize


@pytest.mark.parametrize("padding,flip", [(0, False), (0, True), (3, False), (2, True)])
def test_crop_padding_and_flip_follow_the_recipe(padding, flip):
    images = distinct_images()
    prep = BatchPreprocessor(IDENTITY, AugmentRecipe(random_crop_padding=padding, horizontal_flip=flip))
    out, _ = prep(images, torch.zeros(8, dtype=torch.long), train=True, generator=torch.Generator().manual_seed(11))
    replay = torch.Generator().manual_seed(11)  # the same draws, in the documented order: crop offsets, then flips
    if padding:
        tops, lefts = (torch.randint(0, 2 * padding + 1, (8,), generator=replay) for _ in range(2))
    flips = torch.rand(8, generator=replay) < 0.5 if flip else torch.zeros(8, dtype=torch.bool)
    for i, image in enumerate(images.float() / 255):
        if padding:
            padded = F.pad(image, (padding,) * 4)
            image = padded[:, tops[i]:tops[i] + 8, lefts[i]:lefts[i] + 8]
        expected = image.flip(-1) if flips[i] else image
        torch.testing.assert_close(out[i], expected)
    eval_out, _ = prep(images, torch.zeros(8, dtype=torch.long), train=False)
    torch.testing.assert_close(eval_out, images.float() / 255)  # evaluation never augments


RESIZED_CROP_CASES = {  # (image height, width, scale, ratio)
    "defaults": (10, 14, [0.08, 1.0], [3 / 4, 4 / 3]),
    "wide_ratios": (9, 9, [0.5, 1.0], [0.2, 5.0]),
    "too_wide_fallback": (8, 20, [0.9, 1.0], [3.0, 4.0]),  # no box of ratio >= 3 fits: every try fails
    "too_tall_fallback": (20, 8, [0.9, 1.0], [0.25, 0.3]),
}


@pytest.mark.parametrize("case", RESIZED_CROP_CASES)
def test_resized_crop_boxes_are_torchvisions_draw_for_draw(case):
    height, width, scale, ratio = RESIZED_CROP_CASES[case]
    for seed in range(300):
        torch.manual_seed(seed)  # torchvision draws from the global RNG, the sampler from the batch generator
        expected = v1_transforms.RandomResizedCrop.get_params(torch.zeros(3, height, width), scale, ratio)
        assert random_resized_crop_box(height, width, scale, ratio, torch.Generator().manual_seed(seed)) == expected


@pytest.mark.parametrize("case, box", [("too_wide_fallback", (0, 0, 7, 20)), ("too_tall_fallback", (0, 1, 20, 6))])
def test_resized_crop_falls_back_to_the_central_crop_of_the_nearest_ratio(case, box):
    height, width, scale, ratio = RESIZED_CROP_CASES[case]  # 20 / 3 -> 7 rows, centred; 20 * 0.3 -> 6 columns
    generator = torch.Generator().manual_seed(0)
    assert {random_resized_crop_box(height, width, scale, ratio, generator) for _ in range(50)} == {box}


def test_resized_crop_boxes_lie_in_the_image_with_their_area_and_ratio_in_range():
    generator, boxes = torch.Generator().manual_seed(0), []
    for _ in range(2000):
        top, left, height, width = random_resized_crop_box(60, 80, [0.2, 0.6], [0.5, 2.0], generator)
        assert 0 <= top and top + height <= 60 and 0 <= left and left + width <= 80
        boxes.append((height, width))
    heights, widths = np.array(boxes, dtype=float).T
    areas, ratios = heights * widths / (60 * 80), widths / heights
    rounding = (heights + widths) / (60 * 80)  # w and h are rounded to whole pixels
    assert (areas >= 0.2 - rounding).all() and (areas <= 0.6 + rounding).all()
    assert (ratios >= 0.5 * (1 - 1 / heights) ** 2).all() and (ratios <= 2.0 * (1 + 1 / heights) ** 2).all()
    assert areas.min() < 0.25 and areas.max() > 0.55 and ratios.min() < 0.6 and ratios.max() > 1.7


def test_full_square_resized_crop_is_the_identity():
    images = distinct_images()
    augment = AugmentRecipe(random_crop_padding=0, horizontal_flip=False, random_resized_crop=True,
                            random_resized_crop_scale=[1.0, 1.0], random_resized_crop_ratio=[1.0, 1.0])
    out, _ = BatchPreprocessor(IDENTITY, augment)(images, torch.zeros(8, dtype=torch.long), train=True,
                                                  generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(out, images.float() / 255, rtol=0, atol=0)


def test_a_known_box_is_cropped_and_resized_back_as_torchvision_does():
    images = distinct_images(3, 12)
    boxes = [(2, 3, 5, 7), (0, 0, 12, 12), (1, 4, 11, 8)]  # upscaled, untouched, and shrunk along one side
    out = crop_and_resize_back(images, boxes)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    for image, box, crop in zip(images, boxes, out):
        assert torch.equal(crop, TF.resized_crop(image, *box, [12, 12], antialias=True))
        top, left, height, width = box
        in_float = F.interpolate(image[None, :, top:top + height, left:left + width].float(), size=(12, 12),
                                 mode="bilinear", align_corners=False, antialias=True)[0]
        assert (crop.float() - in_float).abs().max() <= 1.0  # uint8 rounding of the float reference


def test_the_resized_crop_key_changes_the_training_batches_reproducibly():
    images, labels = distinct_images(6, 16), torch.zeros(6, dtype=torch.long)
    spec = InputSpec(24, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))

    def batch(overrides, seed):
        augment = load_recipe(None, ["data.augment.random_crop_padding=0", *overrides]).data.augment
        return BatchPreprocessor(spec, augment)(images, labels, train=True, generator=torch.Generator().manual_seed(seed))[0]

    on = ["data.augment.random_resized_crop=true", "data.augment.random_resized_crop_scale=[0.3,0.6]",
          "data.augment.random_resized_crop_ratio=[0.5,2.0]"]
    assert not torch.equal(batch(on, 1), batch([], 1))
    assert torch.equal(batch(on, 1), batch(on, 1)) and not torch.equal(batch(on, 1), batch(on, 2))
    replay = torch.Generator().manual_seed(1)  # the documented order: the boxes, then the flips
    boxes = [random_resized_crop_box(16, 16, [0.3, 0.6], [0.5, 2.0], replay) for _ in range(6)]
    flips = torch.rand(6, generator=replay) < 0.5
    cropped = crop_and_resize_back(images, boxes)
    expected = torch.where(flips[:, None, None, None], cropped.flip(-1), cropped)
    torch.testing.assert_close(batch(on, 1), BatchPreprocessor(spec).resize_and_normalize(expected))


@pytest.mark.parametrize("name", [None, "randaugment", "trivialaugment"])
def test_auto_augment_is_the_named_torchvision_policy(name):
    images = distinct_images(6, 16)
    spec = InputSpec(16, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    prep = BatchPreprocessor(spec, AugmentRecipe(random_crop_padding=0, horizontal_flip=False, auto_augment=name))
    policies = {"randaugment": v2.RandAugment(), "trivialaugment": v2.TrivialAugmentWide(), None: lambda image: image}
    outputs = {}
    for policy_name, policy in policies.items():
        torch.manual_seed(5)  # policies draw from the global RNG, one draw per image
        outputs[policy_name] = torch.stack([policy(image) for image in images]).float() / 255
    torch.manual_seed(5)
    out, _ = prep(images, torch.zeros(6, dtype=torch.long), train=True, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, outputs[name])
    assert all(not torch.equal(out, other) for key, other in outputs.items() if key != name)


def observed_mix(images: torch.Tensor, mixed: torch.Tensor, soft: torch.Tensor) -> tuple[str, float]:
    """Which mix one batch got and its weight, read off the output; checks images and labels agree on it.
    ``images`` are distinct per sample and labelled 0..B-1, so ``soft[i, i]`` is the weight of image i's own."""
    own, other = images.float() / 255, images.float().roll(1, 0) / 255
    lam = float(soft[0, 0])
    torch.testing.assert_close(soft.diagonal(), torch.full((len(soft),), lam))  # one weight for the whole batch
    torch.testing.assert_close(soft.roll(1, 1).diagonal(), torch.full((len(soft),), 1 - lam))
    if lam in (0.0, 1.0):  # an empty (or full) cutmix box and a mixup with lam 1 (or 0) look the same
        torch.testing.assert_close(mixed, own if lam == 1.0 else other)
        return "either", lam
    if torch.allclose(mixed, lam * own + (1 - lam) * other, atol=1e-5):
        return "mixup", lam
    from_own = (mixed == own).all(dim=1)  # (B, H, W): pixels pasted from the neighbour are the cutmix box
    assert ((mixed == own) | (mixed == other)).all()
    assert from_own.float().mean(dim=(1, 2)).tolist() == pytest.approx([lam] * len(soft))
    return "cutmix", lam


def mixes(augment: AugmentRecipe, draws: int) -> list[tuple[str, float]]:
    images = distinct_images(4, 16)
    prep = BatchPreprocessor(InputSpec(16, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), augment, num_classes=4)
    torch.manual_seed(0)
    found = []
    for _ in range(draws):
        mixed, soft = prep(images, torch.arange(4), train=True, generator=torch.Generator().manual_seed(0))
        found.append(observed_mix(images, mixed, soft))
    return found


def no_crop_no_flip(**alphas) -> AugmentRecipe:
    return AugmentRecipe(random_crop_padding=0, horizontal_flip=False, **alphas)


@pytest.mark.parametrize("alpha", [0.4, 2.0])
def test_mixup_weights_are_beta_alpha_alpha(alpha):
    found = mixes(no_crop_no_flip(mixup_alpha=alpha), 300)
    assert {kind for kind, _ in found} <= {"mixup", "either"}
    lams = [lam for _, lam in found]
    assert scipy.stats.kstest(lams, scipy.stats.beta(alpha, alpha).cdf).pvalue > 0.01


def simulated_cutmix_weights(alpha: float, size: int, draws: int, seed: int = 0) -> np.ndarray:
    """CutMix (Yun et al. 2019, as torchvision implements it): lam ~ Beta(alpha, alpha), a box of half-sides
    int(size * sqrt(1 - lam) / 2) around a uniform centre, clipped to the image; the weight is the uncovered area."""
    rng = np.random.default_rng(seed)
    lam = rng.beta(alpha, alpha, draws)
    half = (0.5 * np.sqrt(1 - lam) * size).astype(int)
    cx, cy = rng.integers(0, size, draws), rng.integers(0, size, draws)
    width = np.minimum(cx + half, size) - np.maximum(cx - half, 0)
    height = np.minimum(cy + half, size) - np.maximum(cy - half, 0)
    return 1 - width * height / size ** 2


@pytest.mark.parametrize("alpha", [0.5, 3.0])
def test_cutmix_weights_follow_beta_alpha_alpha_boxes(alpha):
    found = mixes(no_crop_no_flip(cutmix_alpha=alpha), 300)
    assert {kind for kind, _ in found} <= {"cutmix", "either"}
    lams = [lam for _, lam in found]
    assert scipy.stats.ks_2samp(lams, simulated_cutmix_weights(alpha, 16, 4000)).pvalue > 0.01


def test_no_alpha_no_mix_and_both_alphas_pick_one_per_batch():
    images = distinct_images(4, 16)
    plain = BatchPreprocessor(InputSpec(16, (0.0,) * 3, (1.0,) * 3), no_crop_no_flip(), num_classes=4)
    out, labels = plain(images, torch.arange(4), train=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(labels, torch.arange(4)) and torch.equal(out, images.float() / 255)
    kinds = [kind for kind, _ in mixes(no_crop_no_flip(mixup_alpha=1.0, cutmix_alpha=1.0), 40)]
    assert 10 <= kinds.count("mixup") <= 30 and 10 <= kinds.count("cutmix") <= 30


# ---------------------------------------------------------------------------------------------- data and input spec


@pytest.mark.parametrize("fraction,max_train,max_eval,sizes", [
    (0.1, None, None, (2700, 300, 600)),  # synthetic: 3000 train images, 600 test
    (0.1, 100, 40, (100, 40, 40)),
    (0.25, 500, None, (500, 750, 600)),
])
def test_val_fraction_and_sample_limits(fraction, max_train, max_eval, sizes):
    recipe = DataRecipe(val_fraction=fraction, max_train_samples=max_train, max_eval_samples=max_eval)
    splits, *_ = split_dataset(load_raw("synthetic"), recipe, seed=0)
    assert (len(splits["train"]), len(splits["validation"]), len(splits["test"])) == sizes


def test_image_and_label_columns_named_in_the_recipe_are_used():
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

    photos, sketches = np.zeros((20, 4, 4, 3), np.uint8), np.full((20, 4, 4, 3), 200, np.uint8)
    features = Features({"photo": Image(), "sketch": Image(), "fine": ClassLabel(names=["a", "b", "c", "d"]),
                         "coarse": ClassLabel(names=["x", "y"])})
    raw = DatasetDict({"train": Dataset.from_dict({"photo": list(photos), "sketch": list(sketches),
                                                   "fine": [i % 4 for i in range(20)], "coarse": [i % 2 for i in range(20)]},
                                                  features=features)})
    for image_column, label_column, names in (("photo", "fine", ["a", "b", "c", "d"]), ("sketch", "coarse", ["x", "y"])):
        recipe = DataRecipe(image_column=image_column, label_column=label_column, val_fraction=0.5)
        _, found_image, found_label, found_names = split_dataset(raw, recipe, seed=0)
        assert (found_image, found_label, found_names) == (image_column, label_column, names)


def test_input_spec_precedence(tiny_pretrained_dirs):
    vit = ModelRecipe(name=str(tiny_pretrained_dirs["vit"]))  # its processor: 32 px, mean = std = 0.5
    assert resolve_input_spec(vit, DataRecipe()) == InputSpec(32, (0.5,) * 3, (0.5,) * 3)
    data = DataRecipe(image_size=48, mean=[0.1, 0.2, 0.3], std=[0.4, 0.5, 0.6])
    assert resolve_input_spec(vit, data) == InputSpec(48, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert resolve_input_spec(vit, DataRecipe(std=[0.4, 0.5, 0.6])) == InputSpec(32, (0.5,) * 3, (0.4, 0.5, 0.6))
    scratch = ModelRecipe(name="scratch_vit", config={"image_size": 24})
    assert resolve_input_spec(scratch, DataRecipe()).image_size == 24
    assert resolve_input_spec(ModelRecipe(name="scratch_vit"), DataRecipe(image_size=40)).image_size == 40
    assert resolve_input_spec(scratch, DataRecipe(mean=[0.2, 0.2, 0.2])).mean == (0.2, 0.2, 0.2)
    with pytest.raises(RecipeError, match="data.image_size: 40 differs from model.config.image_size 24"):
        resolve_input_spec(scratch, DataRecipe(image_size=40))
