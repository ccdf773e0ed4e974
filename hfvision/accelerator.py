"""One place that creates the ``Accelerator``, so training and evaluation agree on processes and devices."""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState


def make_accelerator(**kwargs) -> Accelerator:
    """An ``Accelerator`` for this process, fresh even if one was made before in the same process.

    Accelerate keeps process-wide singletons; a second run in one process (a sweep, a test) may ask for another
    precision or accumulation, so they are reset (the process group itself is kept). Accelerate forms a CPU
    process group (gloo) only when told ``cpu=True``: under ``torchrun``/``accelerate launch`` on a machine
    without a GPU, that is said here, so the same script runs on one CPU, many CPU processes, or GPUs.
    """
    AcceleratorState._reset_state()
    GradientState._reset_state()
    multi_process_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(cpu=multi_process_cpu, **kwargs)


def main_process_says(accelerator: Accelerator, value):
    """The main process's ``value`` on every process, so that all take the same branch."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]
