"""How the benchmarks time: measures alternated on a shared machine, the one train-step timer, a timed ``fit``."""

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from hfvision.models.outputs import logits_of
from hfvision.pipeline import fit


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def alternate(measures: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Call each measure once per round, in turn (A B C A B C ...), so load on a shared machine hits all alike."""
    results = {name: [] for name in measures}
    for _ in range(rounds):
        for name, measure in measures.items():
            results[name].append(measure())
    return results


def train_step_timer(model: torch.nn.Module, *, image_size: int, batch_size: int, steps: int, num_labels: int = 10,
                     dtype: torch.dtype | None = None, optimizer: torch.optim.Optimizer | None = None,
                     forward: Callable = logits_of) -> Callable[[], float]:
    """After one warm-up step, a callable timing ``steps`` train steps (forward, cross-entropy, backward, optimiser
    step) on one random batch on the model's device -> images/s. ``optimizer``: AdamW, lr 1e-4, unless given;
    ``dtype``: autocast to it (None: fp32); ``forward(model, pixels)`` returns logits."""
    device = next(model.parameters()).device
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4) if optimizer is None else optimizer
    pixels = torch.randn(batch_size, 3, image_size, image_size, device=device)
    labels = torch.randint(0, num_labels, (batch_size,), device=device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def step() -> None:
        with autocast:
            loss = F.cross_entropy(forward(model, pixels).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()

    def measure() -> float:
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        return batch_size * steps / (time.perf_counter() - start)
    return measure


def fit_timed(recipe) -> tuple[dict, float]:
    """``hfvision.pipeline.fit(recipe)``: its metrics and its wall-clock seconds."""
    start = time.perf_counter()
    metrics = fit(recipe)
    return metrics, time.perf_counter() - start
