"""A run, stage by stage: ``fit(recipe)`` reads as the story of one run.

    check the run dir -> resolve the input -> data -> model -> train -> evaluate -> explain -> share

Each stage is a function of what the ones before returned; the packages below do one job each (``data/``
loads and decodes, ``models/`` builds, ``training/`` trains, ``evaluation/`` measures, ``explain/`` draws,
``hub`` shares) and only this module calls them all. ``evaluate_saved_model`` is the short pipeline behind
``hfvision evaluate``: resolve -> data -> model -> evaluate.

Run directory (the contract in DESIGN.md): ``recipe.yaml``, ``best/`` and ``last/`` (``save_pretrained`` dirs
with the image processor), ``checkpoint/`` (what ``train.resume=true`` continues from), ``metrics.json``,
``curves.png``, ``confusion_matrix.png``, ``report.md``, ``gradcam_per_class.png`` (``eval.explain``), and
``logs/`` for trackers. Everything is written by the main process; every process takes part in training and
in the test evaluation, and trackers are closed last (``end_training`` destroys the process group).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader
from transformers import AutoModelForImageClassification

from hfvision.accelerator import main_process_says, make_accelerator
from hfvision.data.streaming import StreamLoader, load_streaming_data
from hfvision.data.sources import ImageData, ImageSplit, decode_splits, load_eval_split, load_raw, split_dataset
from hfvision.data.transforms import BatchPreprocessor
from hfvision.errors import HfvisionError
from hfvision.evaluation.artifacts import write_run_artifacts
from hfvision.evaluation.evaluator import evaluate_model
from hfvision.explain.api import per_class_grid
from hfvision.fileio import atomic_directory
from hfvision.hub import push_to_hub, write_model_card
from hfvision.models.factory import BuiltModel, build_model, load_model_for_inference, resolve_input_spec
from hfvision.models.module_tree import count_parameters
from hfvision.models.outputs import channels_last_logits, logits_of
from hfvision.models.module_tree import count_parameters
from hfvision.recipe import Recipe, TrainRecipe
from hfvision.run_dir import claim_run_dir
from hfvision.spec import InputSpec
from hfvision.training.checkpoint import load_checkpoint
from hfvision.training.feature_cache import (CachedFeatures, FeatureBatches, FeatureCachePlan, cached_head_data,
                                             head_logits, plan_feature_cache)
from hfvision.training.optim import ScheduleLength, build_optimizer, build_scheduler, warn_unusual_learning_rate
from hfvision.training.state import TrainerState
from hfvision.training.trainer import TrainingParts, make_ema, steps_per_epoch, train_epochs


def fit(recipe: Recipe) -> dict:
    """Train per the recipe, evaluate ``best/`` on the test split, explain, share. Returns the metrics. The run
    dir is held for this run alone until it ends (``claim_run_dir``)."""
    with claim_run_dir(recipe) as run_dir:
        return _fit(recipe, run_dir)


def _fit(recipe: Recipe, run_dir: Path) -> dict:
    accelerator = _make_accelerator(recipe, run_dir)
    warn_unusual_learning_rate(recipe.model, recipe.train)  # one line, main process only
    set_seed(recipe.seed)
    spec = resolve_input_spec(recipe.model, recipe.data)
    data = load_data(recipe, spec, accelerator)
    built = build_model(recipe.model, spec, data.label_names)
    _describe(accelerator, data, built)
    cache = plan_feature_cache(recipe)
    state = train_model(recipe, accelerator, built, data, run_dir, cache)
    best, test, recovered_from = evaluate_best(recipe, accelerator, data, spec, run_dir, state)
    accelerator.print(f"test accuracy {test['accuracy']:.4f} (best epoch {state.best_epoch})")
    metrics = _run_metrics(test, state, recovered_from, cache, data)
    if accelerator.is_main_process:
        metrics = write_run_artifacts(run_dir, recipe, metrics, best, spec.image_size, count_parameters(built.model)[1])
        if recipe.eval.explain:
            per_class_grid(best, spec, data.test, data.label_names, run_dir / "gradcam_per_class.png",
                           name=recipe.model.name)
        share(recipe, run_dir, accelerator)
    accelerator.wait_for_everyone()
    if recipe.train.report_to != "none":
        accelerator.end_training()
    return metrics


# ---------------------------------------------------------------------------------------------- stages


def load_data(recipe: Recipe, spec: InputSpec, accelerator: Accelerator) -> ImageData:
    """Splits (the main process first, so a download or cache build happens once), each decoded once into its
    store at the spec (built by the first process to need it, reused after), timed as the data stage."""
    started = time.perf_counter()
    if recipe.data.streaming:
        data = load_streaming_data(recipe.data, recipe.seed, spec, accelerator, accelerator.print)
        data.seconds = time.perf_counter() - started
        return data
    with accelerator.main_process_first():
        splits, image_column, label_column, label_names = split_dataset(load_raw(recipe.data.dataset),
                                                                        recipe.data, recipe.seed)
    data = decode_splits(splits, image_column, label_column, spec.decode_size, label_names, recipe.data.on_bad_image,
                         spec.crop_pct, recipe.data.decode_workers, accelerator.print)
    data.seconds = time.perf_counter() - started
    for name, split in data.splits().items():
        record = split.store
        if record is None:  # the streamed training split
            continue
        accelerator.print(f"data: {name} store {'built' if record.built else 'reused'} in {record.seconds:.1f} s, "
                          f"{record.images} images at {record.side} px, {record.path}")
    if data.skipped:  # data.on_bad_image=skip
        accelerator.print(f"data: skipped {len(data.skipped)} unreadable image(s): {'; '.join(data.skipped[:3])}"
                          + (" ..." if len(data.skipped) > 3 else ""))
    return data


@dataclass
class Trainee:
    """What trains and on what: the whole model on uint8 pixel batches, or (the feature cache) its head on the
    frozen part's features, computed once per split; either way ``best/`` is the whole model."""

    module: torch.nn.Module
    train_set: ImageSplit | CachedFeatures
    val_set: ImageSplit | CachedFeatures
    preprocessor: BatchPreprocessor | FeatureBatches
    forward: Callable  # (prepared module, inputs) -> logits, in training
    validation_forward: Callable = logits_of  # validation batches stay contiguous under train.channels_last


def train_model(recipe: Recipe, accelerator: Accelerator, built: BuiltModel, data: ImageData, run_dir: Path,
                cache: FeatureCachePlan) -> TrainerState:
    """What trains; its loaders, optimiser, schedule and EMA, prepared; the state, restored from ``checkpoint/`` on
    resume; the run's records started; the epochs. Returns the final trainer state."""
    trainee = _trainee(recipe, accelerator, built, data, cache)
    parts, val_loader = _prepare_parts(recipe, accelerator, trainee)
    state = _initial_state(accelerator, run_dir, recipe.train, parts)
    _start_run_records(recipe, accelerator, run_dir)

    def validate(kept_model):
        return evaluate_model(kept_model, val_loader, trainee.preprocessor, accelerator, data.label_names,
                              trainee.validation_forward)

    return train_epochs(parts, state, validate=validate, image_processor=built.image_processor, run_dir=run_dir)


def evaluate_best(recipe: Recipe, accelerator: Accelerator, data: ImageData, spec: InputSpec, run_dir: Path,
                  state: TrainerState):
    """``best/`` as it reloads from disk, evaluated once on the test split by every process (under the recipe's
    mixed precision). Returns (the unwrapped float32 model, the test metrics block, ``"last"`` when a run that lost
    ``best/`` evaluated (and kept) ``last/``, else None)."""
    recovered_from = None
    if main_process_says(accelerator, not (run_dir / "best" / "config.json").is_file()):
        _recover_best(accelerator, run_dir, state)
        recovered_from = "last"
    best = accelerator.prepare_model(AutoModelForImageClassification.from_pretrained(run_dir / "best"),
                                     evaluation_mode=True)
    test_loader = accelerator.prepare_data_loader(data.test.loader(recipe.eval.batch_size, shuffle=False))
    test = evaluate_model(best, test_loader, BatchPreprocessor(spec), accelerator, data.label_names)
    # the model as from_pretrained gives it (float32, no autocast forward): what latency, FLOPs and the heat maps see
    return accelerator.unwrap_model(best, keep_fp32_wrapper=False), test, recovered_from


def _recover_best(accelerator: Accelerator, run_dir: Path, state: TrainerState) -> None:
    """``best/`` is gone (deleted by hand, or lost with a disk): copy ``last/`` into its place, saying so; the
    state's best epoch becomes the last one."""
    if main_process_says(accelerator, not (run_dir / "last" / "config.json").is_file()):
        raise HfvisionError(f"output_dir: {run_dir} has neither best/ nor last/ to evaluate; delete its "
                            f"checkpoint/ and train again")
    last_epoch = len(state.history)
    accelerator.print(f"best/ is missing from {run_dir}: evaluating last/ (epoch {last_epoch}) instead and keeping "
                      f"it as best/")
    failure = None
    if accelerator.is_main_process:
        try:
            with atomic_directory(run_dir / "best") as tmp:
                shutil.copytree(run_dir / "last", tmp, dirs_exist_ok=True)
        except OSError as exc:
            failure = f"output_dir: copying last/ to best/ in {run_dir} failed ({exc.strerror or exc})"
    failure = main_process_says(accelerator, failure)  # every process stops together, or none does
    if failure:
        raise HfvisionError(failure)
    state.best_epoch = last_epoch


def share(recipe: Recipe, run_dir: Path, accelerator: Accelerator) -> None:
    """The model card in ``best/``; a push to the Hub when the recipe asks (main process only)."""
    write_model_card(run_dir)
    if recipe.hub.push:
        url = push_to_hub(run_dir, recipe.hub.repo_id, private=recipe.hub.private)
        accelerator.print(f"pushed best/ to {url}")


def evaluate_saved_model(model_name: str, dataset: str, split: str = "test", batch_size: int = 256,
                         max_samples: int | None = None) -> dict:
    """The ``test``-style metrics block of a saved model dir, run dir or Hub id on one split of ``dataset``."""
    accelerator = make_accelerator()
    built = load_model_for_inference(model_name)
    with accelerator.main_process_first():
        split_data, label_names = load_eval_split(dataset, split, built.spec.decode_size, max_samples,
                                                   crop_pct=built.spec.crop_pct)
    model_labels = [built.model.config.id2label[i] for i in range(built.model.config.num_labels)]
    if model_labels != label_names:
        raise HfvisionError(f"--data: the model's labels ({', '.join(model_labels[:5])}, ...) differ from "
                            f"the dataset's ({', '.join(label_names[:5])}, ...)")
    model, loader = accelerator.prepare(built.model, split_data.loader(batch_size, shuffle=False))
    accelerator.print(f"evaluating {len(split_data)} images on {accelerator.num_processes} process(es)")
    return evaluate_model(model, loader, BatchPreprocessor(built.spec), accelerator, label_names)


# ---------------------------------------------------------------------------------------------- helpers


def _make_accelerator(recipe: Recipe, run_dir: Path) -> Accelerator:
    train = recipe.train
    if train.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise HfvisionError("train.mixed_precision: fp16 needs a CUDA GPU; use bf16 or no on this machine")
    return make_accelerator(
        mixed_precision=train.mixed_precision,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        log_with=None if train.report_to == "none" else train.report_to,
        project_dir=str(run_dir / "logs"),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=recipe.seed),
    )


def _describe(accelerator: Accelerator, data: ImageData, built: BuiltModel) -> None:
    for note in built.notes:
        accelerator.print(note)
    total, trainable = count_parameters(built.model)
    accelerator.print(f"data: {len(data.train)} train / {len(data.validation)} val / {len(data.test)} test images, "
                      f"{len(data.label_names)} classes; model: {total:,} parameters, {trainable:,} trainable; "
                      f"input {built.spec.image_size}px")


def _trainee(recipe: Recipe, accelerator: Accelerator, built: BuiltModel, data: ImageData,
             cache: FeatureCachePlan) -> Trainee:
    """The whole model on pixels (channels-last when ``train.channels_last``), or its head on cached features."""
    preprocessor = BatchPreprocessor(built.spec, recipe.data.augment, num_classes=len(data.label_names))
    if recipe.model.tuning == "head_only":
        accelerator.print(cache.describe())
    if cache.enabled:  # a cached run trains only the head, on feature vectors: channels-last has nothing to lay out
        head, train_set, val_set = cached_head_data(built.model, data, preprocessor, accelerator, cache,
                                                    batch_size=recipe.eval.batch_size, seed=recipe.seed)
        return Trainee(head, train_set, val_set, FeatureBatches(), head_logits, head_logits)
    if recipe.train.channels_last:
        return Trainee(built.model.to(memory_format=torch.channels_last), data.train, data.validation, preprocessor,
                       channels_last_logits)
    return Trainee(built.model, data.train, data.validation, preprocessor, logits_of)


def _prepare_parts(recipe: Recipe, accelerator: Accelerator, trainee: Trainee) -> tuple[TrainingParts, DataLoader]:
    """Loaders, optimiser and schedule through ``accelerator.prepare``, and the EMA of the prepared model
    (checkpointed as safetensors by ``save_checkpoint``, never pickled). Returns the parts and the val loader."""
    train_recipe = recipe.train
    train_loader = trainee.train_set.loader(train_recipe.batch_size, shuffle=True)
    val_loader = trainee.val_set.loader(recipe.eval.batch_size, shuffle=False)
    optimizer = build_optimizer(trainee.module, train_recipe)
    global_batches = getattr(train_loader, "global_batches", None) or len(train_loader)  # a stream: all processes'
    epoch_steps = steps_per_epoch(global_batches, train_recipe.gradient_accumulation_steps)
    schedule_length = ScheduleLength(train_recipe.epochs * epoch_steps)
    scheduler = build_scheduler(optimizer, train_recipe, epoch_steps, schedule_length)
    if isinstance(train_loader, StreamLoader):  # split across processes already (split_dataset_by_node)
        prepared, optimizer, val_loader, scheduler = accelerator.prepare(trainee.module, optimizer, val_loader,
                                                                         scheduler)
    else:
        prepared, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
            trainee.module, optimizer, train_loader, val_loader, scheduler)
    ema = None
    if train_recipe.ema_decay is not None:
        ema = make_ema(accelerator.unwrap_model(prepared), train_recipe.ema_decay)
    parts = TrainingParts(accelerator, prepared, optimizer, scheduler, train_loader, trainee.preprocessor,
                          train_recipe, recipe.seed, ema, schedule_length, trainee.forward)
    return parts, val_loader


def _initial_state(accelerator: Accelerator, run_dir: Path, train_recipe: TrainRecipe,
                   parts: TrainingParts) -> TrainerState:
    """A fresh trainer state, or the one in ``checkpoint/`` (with every prepared object's state) on resume; a run
    under ``train.time_budget_minutes`` continues on the schedule length its budget had sized."""
    if train_recipe.resume and (run_dir / "checkpoint").exists():
        state = load_checkpoint(accelerator, run_dir, parts.ema)
        where = f"epoch {state.epoch + 1}, batch {state.batch}" if state.batch else f"epoch {state.epoch}"
        accelerator.print(f"resumed from {run_dir / 'checkpoint'} ({'in' if state.batch else 'after'} {where})")
        if train_recipe.time_budget_minutes and state.schedule_steps:
            parts.schedule_length.total_steps = state.schedule_steps
        return state
    if train_recipe.resume:
        accelerator.print(f"train.resume: no checkpoint in {run_dir}; starting from scratch")
    return TrainerState()


def _start_run_records(recipe: Recipe, accelerator: Accelerator, run_dir: Path) -> None:
    """``recipe.yaml`` (main process) and the trackers (``train.report_to``)."""
    if accelerator.is_main_process:
        recipe.save(run_dir / "recipe.yaml")
    if recipe.train.report_to != "none":
        accelerator.init_trackers("hfvision", config=_flat_hparams(recipe))


def _run_metrics(test: dict, state: TrainerState, recovered_from: str | None, cache: FeatureCachePlan,
                 data: ImageData) -> dict:
    return {"test": test, "best_epoch": state.best_epoch, "best_val_accuracy": state.best_val_accuracy,
            **({"best_recovered_from": recovered_from} if recovered_from else {}),
            "history": state.history, "stopped_early": state.stopped_early,
            "feature_cache": cache.record(),
            "training": {"images_seen": state.images_seen, "optimizer_steps": state.global_step,
                         "epochs": len(state.history), "seconds": state.elapsed_seconds,
                         "time_budget_spent": state.budget_spent},
            "data": {"train": len(data.train), "validation": len(data.validation), "test": len(data.test),
                     "skipped_images": len(data.skipped), "skipped": data.skipped, "seconds": round(data.seconds, 3),
                     "stores": {name: split.store.as_dict() for name, split in data.splits().items() if split.store}}}


def _flat_hparams(recipe: Recipe) -> dict:
    flat = {}

    def walk(prefix, node):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(f"{prefix}{key}.", value)
            elif isinstance(value, (int, float, str, bool)):
                flat[prefix + key] = value
    walk("", recipe.to_dict())
    return flat
