"""The run directory, checked before anything is loaded: usable, writable, and holding this run or none.

A run dir that holds a checkpoint belongs to the recipe saved beside it (``recipe.yaml``). Continuing it
(``train.resume=true``) needs the same recipe, except the keys in ``RESUMABLE_KEYS``, which change what happens
next without changing what was already done; any other difference is named, key by key, before data or
model are loaded (nanoGPT forces architecture keys to match the checkpoint in one spot; this is that spot).

One run per directory: ``claim_run_dir`` holds an exclusive ``flock`` on ``output_dir/.hfvision.lock`` for the
whole run (taken by the first process of a multi-process run), so a second run started on the same directory is
refused in one line. The kernel drops the lock when its process dies, so a killed run never leaves it behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

import yaml

from hfvision.errors import HfvisionError
from hfvision.fileio import recover_interrupted
from hfvision.recipe import Recipe

RESUMABLE_KEYS = (
    "output_dir", "train.resume", "train.epochs", "train.early_stopping_patience", "train.checkpoint_every_steps",
    "train.checkpoint_every_minutes", "train.report_to", "eval.", "hub.", "sweep.",
)


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def recipe_differences(saved: dict, new: dict) -> list[str]:
    """``key (saved -> new)`` for every key that differs and is not resumable."""
    old_flat, new_flat = _flatten(saved), _flatten(new)
    changed = []
    for key in sorted(set(old_flat) | set(new_flat)):
        if key.startswith(RESUMABLE_KEYS) or key in RESUMABLE_KEYS:
            continue
        if old_flat.get(key) != new_flat.get(key):
            changed.append(f"{key} ({old_flat.get(key)!r} -> {new_flat.get(key)!r})")
    return changed


def _check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise HfvisionError(f"output_dir: cannot write to {run_dir} ({exc.strerror or exc}); "
                            f"choose a directory you can write to") from None


LOCK_FILE = ".hfvision.lock"


def _is_first_process() -> bool:
    return os.environ.get("RANK", "0") == "0"  # torchrun / accelerate launch; the Accelerator does not exist yet


@contextlib.contextmanager
def claim_run_dir(recipe: Recipe):
    """``prepare_run_dir`` under the directory's lock, held until the run ends; yields the run dir."""
    run_dir = Path(recipe.output_dir)
    _check_not_a_file(run_dir)
    _check_writable(run_dir)
    lock = None
    if _is_first_process():
        lock = (run_dir / LOCK_FILE).open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise HfvisionError(f"output_dir: {run_dir} is in use by another hfvision run ({holder}); wait for it "
                                f"to end or choose another output_dir") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}")
        lock.flush()
    try:
        yield prepare_run_dir(recipe)
    finally:
        if lock is not None:
            lock.close()  # closing the file releases the lock


def _check_not_a_file(run_dir: Path) -> None:
    for parent in (run_dir, *run_dir.parents):
        if parent.exists() and not parent.is_dir():
            raise HfvisionError(f"output_dir: {parent} is a file, not a directory; choose another output_dir")


def prepare_run_dir(recipe: Recipe) -> Path:
    """Check ``output_dir`` for this recipe and return it (created, writable); repair an interrupted rename."""
    run_dir = Path(recipe.output_dir)
    _check_not_a_file(run_dir)
    _check_writable(run_dir)
    if _is_first_process():  # the others only read: a refused second run must not touch the first one's dirs
        for name in ("checkpoint", "best", "last"):
            recover_interrupted(run_dir / name)
    holds_run = (run_dir / "checkpoint").exists()
    if holds_run and not recipe.train.resume:
        raise HfvisionError(f"output_dir: {run_dir} already holds a run; pass train.resume=true to continue it "
                            f"or choose another output_dir")
    saved_recipe = run_dir / "recipe.yaml"
    if holds_run and saved_recipe.is_file():
        changed = recipe_differences(yaml.safe_load(saved_recipe.read_text()) or {}, recipe.to_dict())
        if changed:
            raise HfvisionError(f"train.resume: {run_dir} was trained with another recipe: {'; '.join(changed)}; "
                                f"resume with the saved values or choose another output_dir")
    return run_dir
