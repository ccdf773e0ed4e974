"""What a model expects of its input pixels; shared by the models (which declare it) and data (which applies it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Normalization:
    """What the model expects: square input ``size`` and per-channel ``mean``/``std`` on [0, 1] pixels."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
