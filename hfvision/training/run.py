"""``fit(recipe)``: recipe -> data -> model -> training -> test evaluation -> run directory.

Run directory (the contract in DESIGN.md): ``recipe.yaml``, ``best/`` and ``last/`` (``save_pretrained``
dirs with the image processor), ``checkpoint/`` (what ``train.resume=true`` continues from),
``metrics.json``, ``curves.png``, ``confusion_matrix.png``, ``report.md``, and ``logs/`` for trackers.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from transformers import AutoModelForImageClassification

from hfvision.accelerator import make_accelerator
from hfvision.data.sources import decode_splits, load_raw, split_dataset
from hfvision.data.transforms import BatchPreprocessor
from hfvision.errors import HfvisionError
from hfvision.evaluation.artifacts import write_run_artifacts
from hfvision.evaluation.evaluator import evaluate
from hfvision.explain.api import per_class_grid
from hfvision.fileio import atomic_directory, recover_interrupted, write_json_atomic
from hfvision.hub import push_to_hub, write_model_card
from hfvision.models.factory import build_model
from hfvision.models.lora import save_model
from hfvision.models.tuning import count_parameters
from hfvision.recipe import Recipe
from hfvision.training.checkpoint import TRAINER_STATE, read_trainer_state
from hfvision.training.loop import TrainingParts, make_ema, steps_per_epoch, train_one_epoch
from hfvision.training.optim import build_optimizer, build_scheduler, warn_unusual_learning_rate


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


def _check_run_dir(run_dir: Path, resume: bool) -> None:
    for name in ("checkpoint", "best", "last"):
        recover_interrupted(run_dir / name)
    if not resume and (run_dir / "checkpoint").exists():
        raise HfvisionError(f"output_dir: {run_dir} already holds a run; pass train.resume=true to continue it "
                            f"or choose another output_dir")


def _save_model_dir(accelerator: Accelerator, model, processor, path: Path) -> None:
    """``save_pretrained`` of the unwrapped model plus its image processor, atomically, on the main process."""
    if accelerator.is_main_process:
        with atomic_directory(path) as tmp:
            save_model(accelerator.unwrap_model(model), tmp)  # LoRA: merged weights + adapter/
            processor.save_pretrained(tmp)
    accelerator.wait_for_everyone()


def _save_checkpoint(accelerator: Accelerator, run_dir: Path, trainer_state: dict) -> None:
    final, tmp, old = run_dir / "checkpoint", run_dir / "checkpoint.tmp", run_dir / "checkpoint.old"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # every process writes its RNG state
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(tmp / TRAINER_STATE, trainer_state)
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


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


def _load_data_and_model(recipe: Recipe, accelerator: Accelerator):
    """Splits and label names first (they size the head), then the model, then images decoded at its size."""
    with accelerator.main_process_first():
        splits, image_column, label_column, label_names = split_dataset(load_raw(recipe.data.dataset),
                                                                        recipe.data, recipe.seed)
    built = build_model(recipe.model, recipe.data, label_names)
    data = decode_splits(splits, image_column, label_column, built.normalization.size, label_names)
    total, trainable = count_parameters(built.model)
    accelerator.print(f"data: {len(data.train)} train / {len(data.validation)} val / {len(data.test)} test images, "
                      f"{len(label_names)} classes; model: {total:,} parameters, {trainable:,} trainable")
    return built, data, trainable


def _initial_state(accelerator: Accelerator, run_dir: Path, resume: bool) -> dict:
    """A fresh trainer state, or the one in ``checkpoint/`` (with every prepared object's state) on resume."""
    if resume and (run_dir / "checkpoint").exists():
        accelerator.load_state(str(run_dir / "checkpoint"))
        state = read_trainer_state(run_dir / "checkpoint")
        accelerator.print(f"resumed from {run_dir / 'checkpoint'} after epoch {state['epoch']}")
        return state
    if resume:
        accelerator.print(f"train.resume: no checkpoint in {run_dir}; starting from scratch")
    return {"epoch": 0, "history": [], "best_val_accuracy": -1.0, "best_epoch": None,
            "epochs_without_improvement": 0, "stopped_early": False}


def _train_epochs(parts: TrainingParts, state: dict, eval_model, val_loader, label_names: list[str],
                  image_processor, run_dir: Path) -> dict:
    """Epochs from ``state['epoch']``: train, validate, keep best/ and last/, checkpoint; early stopping."""
    accelerator, train = parts.accelerator, parts.train
    for epoch in range(state["epoch"], train.epochs):
        if state.get("stopped_early"):
            break
        record = {"epoch": epoch + 1, **train_one_epoch(parts, epoch)}
        val = evaluate(eval_model(), val_loader, parts.preprocessor, accelerator, label_names)
        record.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
        state["history"].append(record)
        accelerator.print(f"epoch {epoch + 1}/{train.epochs}: train loss {record['train_loss']:.4f} "
                          f"acc {record['train_accuracy']:.4f} | val loss {val['loss']:.4f} acc {val['accuracy']:.4f} "
                          f"| {record['epoch_seconds']:.1f}s")
        if train.report_to != "none":
            accelerator.log({k: v for k, v in record.items() if k != "epoch"}, step=epoch + 1)
        if val["accuracy"] > state["best_val_accuracy"]:
            state.update(best_val_accuracy=val["accuracy"], best_epoch=epoch + 1, epochs_without_improvement=0)
            _save_model_dir(accelerator, eval_model(), image_processor, run_dir / "best")
        else:
            state["epochs_without_improvement"] += 1
        _save_model_dir(accelerator, eval_model(), image_processor, run_dir / "last")
        state["epoch"] = epoch + 1
        patience = train.early_stopping_patience
        if patience is not None and state["epochs_without_improvement"] >= patience:
            state["stopped_early"] = True
            accelerator.print(f"early stopping: no better val accuracy for {patience} epochs")
        _save_checkpoint(accelerator, run_dir, state)
    return state


def _test_and_share(recipe: Recipe, accelerator: Accelerator, state: dict, built, data, preprocessor,
                    trainable: int) -> dict:
    """Evaluate ``best/`` as it reloads from disk on the test split (once), then write the run files and card."""
    run_dir = Path(recipe.output_dir)
    label_names = data.label_names
    best = AutoModelForImageClassification.from_pretrained(run_dir / "best")
    best = accelerator.prepare_model(best, evaluation_mode=True)
    test_loader = accelerator.prepare_data_loader(data.test.loader(recipe.eval.batch_size, shuffle=False))
    test = evaluate(best, test_loader, preprocessor, accelerator, label_names)
    accelerator.print(f"test accuracy {test['accuracy']:.4f} (best epoch {state['best_epoch']})")
    metrics = {"test": test, "best_epoch": state["best_epoch"], "best_val_accuracy": state["best_val_accuracy"],
               "history": state["history"], "stopped_early": state.get("stopped_early", False)}
    if accelerator.is_main_process:
        best_model = accelerator.unwrap_model(best)
        metrics = write_run_artifacts(run_dir, recipe, metrics, best_model, built.normalization.size, trainable)
        if recipe.eval.explain:
            per_class_grid(best_model, built.normalization, data.test, label_names, run_dir / "gradcam_per_class.png",
                           name=recipe.model.name)
        write_model_card(run_dir)
        if recipe.hub.push:
            url = push_to_hub(run_dir, recipe.hub.repo_id, private=recipe.hub.private)
            accelerator.print(f"pushed best/ to {url}")
    accelerator.wait_for_everyone()
    return metrics


def fit(recipe: Recipe) -> dict:
    """Train per the recipe, evaluate ``best/`` on the test split and write the run dir. Returns metrics."""
    run_dir = Path(recipe.output_dir)
    train = recipe.train
    _check_run_dir(run_dir, train.resume)
    accelerator = _make_accelerator(recipe, run_dir)
    warn_unusual_learning_rate(recipe.model, recipe.train)  # one line, main process only
    set_seed(recipe.seed)
    built, data, trainable = _load_data_and_model(recipe, accelerator)

    preprocessor = BatchPreprocessor(built.normalization, recipe.data.augment, num_classes=len(data.label_names))
    train_loader = data.train.loader(train.batch_size, shuffle=True)
    val_loader = data.validation.loader(recipe.eval.batch_size, shuffle=False)
    optimizer = build_optimizer(built.model, train)
    scheduler = build_scheduler(optimizer, train, steps_per_epoch(len(train_loader), train.gradient_accumulation_steps))
    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        built.model, optimizer, train_loader, val_loader, scheduler)
    ema = None
    if train.ema_decay is not None:
        ema = make_ema(accelerator.unwrap_model(model), train.ema_decay)
        accelerator.register_for_checkpointing(ema)
    parts = TrainingParts(accelerator, model, optimizer, scheduler, train_loader, preprocessor, train, recipe.seed, ema)
    state = _initial_state(accelerator, run_dir, train.resume)

    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        recipe.save(run_dir / "recipe.yaml")
    if train.report_to != "none":
        accelerator.init_trackers("hfvision", config=_flat_hparams(recipe))
    eval_model = (lambda: ema.module) if ema is not None else (lambda: model)  # EMA weights are what we keep
    state = _train_epochs(parts, state, eval_model, val_loader, data.label_names, built.image_processor, run_dir)
    if train.report_to != "none":
        accelerator.end_training()
    return _test_and_share(recipe, accelerator, state, built, data, preprocessor, trainable)
