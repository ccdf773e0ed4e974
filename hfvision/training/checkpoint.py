"""What a run keeps on disk while it trains, written atomically in one or many processes.

- ``checkpoint/``: ``accelerator.save_state`` (model, optimiser, scheduler, EMA, RNG states of every process,
  Accelerate's accumulation counter) plus ``trainer_state.json`` (epoch, batches done in the current epoch, the
  epoch's running totals, history, best so far), which ``train.resume=true`` reads. Written at epoch ends and,
  when the recipe asks, every N optimiser steps or minutes.
- ``best/`` and ``last/``: ``save_pretrained`` dirs of the kept weights with the image processor.
"""

from __future__ import annotations

import json
from pathlib import Path

from accelerate import Accelerator

from hfvision.fileio import atomic_directory, commit_staged, staging_path, write_json_atomic
from hfvision.models.lora import save_model

TRAINER_STATE = "trainer_state.json"


def fresh_trainer_state() -> dict:
    return {"epoch": 0, "batch": 0, "global_step": 0, "partial_epoch": None, "history": [], "images_seen": 0,
            "elapsed_seconds": 0.0, "best_val_accuracy": -1.0, "best_epoch": None, "epochs_without_improvement": 0,
            "stopped_early": False, "budget_spent": False}


def read_trainer_state(checkpoint_dir: str | Path) -> dict | None:
    """The saved trainer state; keys added since it was written (a checkpoint of an older hfvision, made at an
    epoch end) take their fresh values."""
    state = Path(checkpoint_dir) / TRAINER_STATE
    return {**fresh_trainer_state(), **json.loads(state.read_text())} if state.is_file() else None


def save_checkpoint(accelerator: Accelerator, run_dir: Path, trainer_state: dict) -> None:
    """Every process writes its part of ``checkpoint.tmp``; the main process adds the trainer state and renames."""
    final = run_dir / "checkpoint"
    if accelerator.is_main_process:
        staging_path(final)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(final.with_name("checkpoint.tmp")))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(final.with_name("checkpoint.tmp") / TRAINER_STATE, trainer_state)
        commit_staged(final)
    accelerator.wait_for_everyone()


def load_checkpoint(accelerator: Accelerator, run_dir: Path) -> dict:
    """Restore every prepared object from ``checkpoint/`` and return its trainer state."""
    accelerator.load_state(str(run_dir / "checkpoint"))
    return read_trainer_state(run_dir / "checkpoint")


def save_model_dir(accelerator: Accelerator, model, image_processor, path: Path) -> None:
    """``save_pretrained`` of the unwrapped model plus its image processor, atomically, on the main process."""
    if accelerator.is_main_process:
        with atomic_directory(path) as tmp:
            save_model(accelerator.unwrap_model(model), tmp)  # a LoRA model: merged weights + adapter/
            image_processor.save_pretrained(tmp)
    accelerator.wait_for_everyone()
