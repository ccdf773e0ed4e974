"""What a run keeps on disk while it trains, written atomically in one or many processes, and read back without
running anything that is in it.

- ``checkpoint/``: ``accelerator.save_state`` (model weights as safetensors; optimiser, scheduler and the RNG states
  of every process as torch files holding only tensors and plain values) plus ``ema.safetensors`` (the EMA's
  weights, ``train.ema_decay``) and ``trainer_state.json`` (a ``TrainerState``: epoch, batches done in the current
  epoch, the epoch's running totals, history, best so far, the time budget's clock), which ``train.resume=true``
  reads. Written at
  epoch ends and, when the recipe asks, every N optimiser steps or minutes.
- ``best/`` and ``last/``: ``save_pretrained`` dirs of the kept weights with the image processor.

A run dir is something people share and download, so loading one must never execute code from it. Nothing is
registered with ``accelerator.register_for_checkpointing`` (Accelerate reads those objects with
``torch.load(weights_only=False)``, which runs whatever a pickle says); every torch file is read with
``weights_only=True``; and ``verify_checkpoint`` checks each file before anything is restored, so a damaged or
planted file is refused in one line that names it.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils.other import load as accelerate_load
from safetensors import SafetensorError
from safetensors.torch import load_model as load_safetensors_model
from safetensors.torch import save_model as save_safetensors_model

from hfvision.errors import HfvisionError
from hfvision.fileio import atomic_directory, commit_staged, disk_full_message, staging_path, write_json_atomic
from hfvision.models.saving import save_model
from hfvision.training.state import TrainerState, field_types

TRAINER_STATE = "trainer_state.json"
EMA_WEIGHTS = "ema.safetensors"


class CheckpointError(HfvisionError):
    """A file of ``checkpoint/`` cannot be used; the message names it and says how to go on."""


def read_trainer_state(checkpoint_dir: str | Path) -> TrainerState | None:
    """The saved trainer state (``TrainerState.from_json``: fields added since it was written take their fresh
    values). A file that is not such a state, or holds a value of another type than its field's, raises
    ``CheckpointError``."""
    path = Path(checkpoint_dir) / TRAINER_STATE
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _damaged(path, f"not valid JSON ({exc})") from None
    if not isinstance(saved, dict):
        raise _damaged(path, "expected a JSON object")
    for key, types in field_types().items():  # bool is an int in Python: checked first, apart
        if key in saved:
            value = saved[key]
            if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
                raise _damaged(path, f"'{key}' is {value!r}, expected {_type_names(types)}")
    return TrainerState.from_json(saved)


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join({int: "an integer", float: "a number", list: "a list", dict: "an object", bool: "true/false",
                        type(None): "null"}[t] for t in types)


def _damaged(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(f"checkpoint: {path} is damaged ({reason}); best/ and last/ are kept: delete "
                           f"{path.parent} to start this run afresh, or restore the file from a copy")


def save_checkpoint(accelerator: Accelerator, run_dir: Path, trainer_state: TrainerState, ema=None) -> None:
    """Every process writes its part of ``checkpoint.tmp``; the main process adds the EMA and trainer state and
    renames. On a full disk (or any write error) ``checkpoint.tmp`` is removed, the previous ``checkpoint/`` is
    kept as it was, and the run ends with one line."""
    final = run_dir / "checkpoint"
    tmp = final.with_name("checkpoint.tmp")
    if accelerator.is_main_process:
        staging_path(final)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            if ema is not None:
                save_safetensors_model(ema, str(tmp / EMA_WEIGHTS))
            write_json_atomic(tmp / TRAINER_STATE, trainer_state.to_json())
    except (OSError, RuntimeError, SafetensorError) as exc:  # torch's zip writer: ENOSPC as a RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_failed(run_dir, exc) from None
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        commit_staged(final)
    accelerator.wait_for_everyone()


def _write_failed(run_dir: Path, exc: Exception) -> HfvisionError:
    full = disk_full_message(run_dir, exc)
    reason = full or f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return HfvisionError(f"checkpoint: writing {run_dir / 'checkpoint'} failed ({reason}); the previous checkpoint "
                         f"is intact: free space and rerun with train.resume=true")


def verify_checkpoint(checkpoint_dir: Path, ema=None) -> TrainerState:
    """Check every file of ``checkpoint/`` without executing anything in it and return the trainer state.

    safetensors files: the header parses and the file holds every byte it promises. torch files: a complete zip
    whose pickle ``torch.load(weights_only=True)`` accepts (tensors and plain values only: a pickle that would
    build any other object is refused, never run). ``trainer_state.json``: JSON of ``TrainerState``'s field types."""
    state = read_trainer_state(checkpoint_dir)
    if state is None:
        raise _damaged(checkpoint_dir / TRAINER_STATE, "missing")
    for path in sorted(checkpoint_dir.iterdir()):
        if path.suffix == ".safetensors":
            _check_safetensors(path)
        elif path.suffix in (".bin", ".pkl", ".pt"):
            _check_torch_file(path)
    if ema is not None and not (checkpoint_dir / EMA_WEIGHTS).is_file():
        raise _damaged(checkpoint_dir / EMA_WEIGHTS, "missing: train.ema_decay is set but this checkpoint has no "
                                                     "EMA weights (written by an hfvision that pickled them)")
    return state


def _check_safetensors(path: Path) -> None:
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            header_length = int.from_bytes(f.read(8), "little")
            if not 0 < header_length <= size - 8:
                raise ValueError(f"header length {header_length} for a file of {size} bytes")
            header = json.loads(f.read(header_length))
        ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise _damaged(path, f"not a safetensors file: {exc}") from None
    expected = 8 + header_length + max(ends, default=0)
    if size != expected:
        raise _damaged(path, f"{size} bytes, its header promises {expected}: truncated")


def _check_torch_file(path: Path) -> None:
    if not zipfile.is_zipfile(path):
        raise _damaged(path, "not a complete torch file (truncated, or not written by torch.save)")
    try:
        # Accelerate's reader: weights_only, plus the numpy array types its RNG states hold (numbers, not code)
        accelerate_load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 -- any refusal or damage, named in one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _damaged(path, f"refused by torch.load(weights_only=True): {first[:200]}") from None


def load_checkpoint(accelerator: Accelerator, run_dir: Path, ema=None) -> TrainerState:
    """Restore every prepared object (and the EMA) from ``checkpoint/``, after ``verify_checkpoint``; return the
    trainer state."""
    checkpoint_dir = run_dir / "checkpoint"
    state = verify_checkpoint(checkpoint_dir, ema)
    try:
        accelerator.load_state(str(checkpoint_dir), load_kwargs={"weights_only": True})
        if ema is not None:
            load_safetensors_model(ema, str(checkpoint_dir / EMA_WEIGHTS))
    except (RuntimeError, ValueError, KeyError) as exc:  # the files are whole but do not fit this model
        first = str(exc).strip().splitlines()[0][:200]
        raise CheckpointError(f"checkpoint: {checkpoint_dir} does not fit this run's model or optimiser ({first}); "
                              f"delete it to start afresh, or resume with the recipe that wrote it") from None
    return state


def save_model_dir(accelerator: Accelerator, model, image_processor, path: Path) -> None:
    """``save_pretrained`` of the unwrapped model plus its image processor, atomically, on the main process."""
    if accelerator.is_main_process:
        try:
            with atomic_directory(path) as tmp:
                save_model(accelerator.unwrap_model(model), tmp)  # a LoRA model: merged weights + adapter/
                image_processor.save_pretrained(tmp)
        except (OSError, RuntimeError, SafetensorError) as exc:
            reason = disk_full_message(path.parent, exc) or f"{type(exc).__name__}: {exc}"
            raise HfvisionError(f"{path.name}/: writing {path} failed ({reason}); the previous copy and "
                                f"checkpoint/ are intact: free space and rerun with train.resume=true") from None
    accelerator.wait_for_everyone()
