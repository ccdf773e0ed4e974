"""``checkpoint/``: ``accelerator.save_state`` (model, optimiser, scheduler, EMA, RNG states of every
process) plus ``trainer_state.json`` (epoch, history, best so far), which ``train.resume=true`` reads."""

from __future__ import annotations

import json
import os
from pathlib import Path

TRAINER_STATE = "trainer_state.json"


def read_trainer_state(checkpoint_dir: str | os.PathLike) -> dict | None:
    state = Path(checkpoint_dir) / TRAINER_STATE
    return json.loads(state.read_text()) if state.is_file() else None
