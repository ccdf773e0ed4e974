"""What the model is fed, decided once per run: :class:`InputSpec`.

Precedence, written down once (``resolve_input_spec`` in ``hfvision.models.factory`` applies it):

1. ``data.image_size`` / ``data.mean`` / ``data.std`` when the recipe sets them;
2. else, for a pretrained checkpoint, its image processor (the crop size when it center-crops);
   for a built-in family, ``model.config.image_size`` (or the family's default) and mean = std = 0.5;
3. for a built-in family, ``data.image_size`` *is* the architecture's input size: setting it and a different
   ``model.config.image_size`` is an error, not a silent override.

Data decodes at it, the batch preprocessor resizes and normalises to it, the model is built for it, and the
saved image processor describes it; nothing downstream re-decides.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InputSpec:
    """Square input ``image_size``, per-channel ``mean``/``std`` on [0, 1] pixels and ``crop_pct`` (the resize
    policy).

    ``crop_pct`` None squashes an image to the square; a number keeps the central square whose side is that
    fraction of the shorter side (timm's eval transform: the shorter side resized to ``image_size / crop_pct``,
    then a centre crop of ``image_size``), taken at decode time. Then an image larger than the input size is
    reduced to it (``decode_size``), so memory per image is bounded by the input size; a smaller one keeps its
    size (CIFAR stays 32 px) and each batch is resized to ``image_size`` on the device."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float | None = None

    @property
    def decode_size(self) -> int:
        """The largest edge a decoded image is kept at: ``image_size`` itself, not a choice of its own."""
        return self.image_size


def input_spec(image_size, mean, std, crop_pct=None) -> InputSpec:
    """An :class:`InputSpec` from loosely typed values (config ints, processor lists)."""
    return InputSpec(int(image_size), tuple(float(v) for v in mean), tuple(float(v) for v in std),
                     None if crop_pct is None else float(crop_pct))
