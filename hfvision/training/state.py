"""Where a run stands: the trainer's state, one typed definition.

The loop updates it step by step; ``checkpoint/trainer_state.json`` is its fields as JSON (``to_json``), and
``train.resume=true`` continues from it (``from_json``, after ``checkpoint.read_trainer_state`` has checked each
value against the field's type).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class TrainerState:
    """The trainer's progress and bests, saved with every checkpoint."""

    epoch: int = 0  # epochs finished; the loop continues with this index
    batch: int = 0  # batches done in the current epoch at a step checkpoint; 0 at an epoch end
    global_step: int = 0  # optimiser steps so far
    # At a step checkpoint: the epoch so far, {"totals": [loss sum, correct, seen] summed over processes, "seconds"}
    partial_epoch: Optional[dict] = None
    history: list = field(default_factory=list)  # one record per finished epoch (metrics.json's history)
    images_seen: int = 0  # training images over every process
    elapsed_seconds: float = 0.0  # training and validation time so far: train.time_budget_minutes' clock
    best_val_accuracy: float = -1.0
    best_epoch: Optional[int] = None  # 1-based; the epoch best/ holds
    epochs_without_improvement: int = 0  # train.early_stopping_patience counts these
    stopped_early: bool = False
    budget_spent: bool = False  # train.time_budget_minutes ran out
    schedule_steps: Optional[int] = None  # the LR schedule's length as the time budget last sized it

    def place(self, *, epoch: int, batch: int, partial_epoch: dict | None, elapsed_seconds: float,
              schedule_steps: int | None) -> None:
        """Where the loop is, set just before a checkpoint is written (at a step, or at an epoch end)."""
        self.epoch, self.batch, self.partial_epoch = epoch, batch, partial_epoch
        self.elapsed_seconds, self.schedule_steps = elapsed_seconds, schedule_steps

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, saved: dict) -> TrainerState:
        """The state of a saved mapping; fields it lacks (an older hfvision's epoch-end checkpoint) take their fresh
        values, keys that are no longer fields (``feature_cache``, saved here before 2026-12) are dropped."""
        return cls(**{name: saved[name] for name in field_types() if name in saved})


def field_types() -> dict[str, tuple[type, ...]]:
    """Field name -> the JSON value types it may hold (a float field takes an integer; Optional adds null)."""
    allowed = {}
    for name, hint in typing.get_type_hints(TrainerState).items():
        args = typing.get_args(hint) if typing.get_origin(hint) is typing.Union else (hint,)
        allowed[name] = tuple(t for a in args for t in ((int, float) if a is float else (a,)))
    return allowed
