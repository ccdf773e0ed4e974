"""Per-batch preprocessing on the device: augment uint8 images, resize to the model's size, normalise.

Images arrive as uint8 (B, 3, h, w) at their stored size (32x32 for CIFAR). Train-time augmentation runs
at the stored size (a random resized crop or a random crop with padding, horizontal flip,
RandAugment/TrivialAugment per sample), then the batch is normalised with the processor's mean/std and resized
to the model's input size.
MixUp/CutMix act on (images, labels) after normalisation and return soft labels.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from hfvision.recipe import AugmentRecipe
from hfvision.spec import InputSpec


def random_crop_with_padding(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``padding`` and crop back to the original size at a random offset per sample (one slice per
    image and one stack: on CPU several times faster than a gather with broadcast index tensors)."""
    batch, _, height, width = images.shape
    padded = F.pad(images, (padding,) * 4)
    top = torch.randint(0, 2 * padding + 1, (batch,), generator=generator, device=generator.device).tolist()
    left = torch.randint(0, 2 * padding + 1, (batch,), generator=generator, device=generator.device).tolist()
    return torch.stack([image[:, t:t + height, l:l + width] for image, t, l in zip(padded, top, left)])


def random_resized_crop_box(height: int, width: int, scale: list, ratio: list,
                            generator: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width) of one random resized crop: torchvision's
    ``RandomResizedCrop.get_params`` draw for draw, from ``generator`` instead of the global RNG. Up to 10 tries of
    an area fraction uniform in ``scale`` and an aspect ratio (w / h) log-uniform in ``ratio``, the first box that
    fits placed uniformly; when none fits, the central crop of :func:`_fallback_box`."""
    area, device = height * width, generator.device
    log_ratio = torch.log(torch.tensor(ratio)).tolist()
    for _ in range(10):
        target_area = area * torch.empty(1, device=device).uniform_(scale[0], scale[1], generator=generator).item()
        log_aspect = torch.empty(1, device=device).uniform_(log_ratio[0], log_ratio[1], generator=generator)
        aspect_ratio = torch.exp(log_aspect).item()
        crop_width = int(round(math.sqrt(target_area * aspect_ratio)))
        crop_height = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = torch.randint(0, height - crop_height + 1, (1,), generator=generator, device=device)
            left = torch.randint(0, width - crop_width + 1, (1,), generator=generator, device=device)
            return int(top), int(left), crop_height, crop_width
    return _fallback_box(height, width, ratio)


def _fallback_box(height: int, width: int, ratio: list) -> tuple[int, int, int, int]:
    """torchvision's fallback: the whole image, narrowed (or lowered) to the nearest aspect ratio in ``ratio``,
    centred."""
    crop_height, crop_width = height, width
    if width / height < min(ratio):
        crop_height = int(round(width / min(ratio)))
    elif width / height > max(ratio):
        crop_width = int(round(height * max(ratio)))
    return (height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width


def random_resized_crop(images: torch.Tensor, scale: list, ratio: list, generator: torch.Generator) -> torch.Tensor:
    """uint8 (B, C, h, w) -> (B, C, h, w): one :func:`random_resized_crop_box` per image, drawn in batch order,
    then :func:`crop_and_resize_back`."""
    height, width = images.shape[-2:]
    boxes = [random_resized_crop_box(height, width, scale, ratio, generator) for _ in range(images.shape[0])]
    return crop_and_resize_back(images, boxes)


def crop_and_resize_back(images: torch.Tensor, boxes: list[tuple[int, int, int, int]]) -> torch.Tensor:
    """Each image's (top, left, height, width) box resized back to the batch's (h, w) by torchvision's
    ``resized_crop`` (bilinear, antialiased; uint8 stays uint8), on the images' device."""
    size = list(images.shape[-2:])
    return torch.stack([TF.resized_crop(image, *box, size, antialias=True) for image, box in zip(images, boxes)])


def random_horizontal_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(images.shape[0], generator=generator, device=generator.device) < 0.5
    flip = flip.to(images.device)[:, None, None, None]
    return torch.where(flip, images.flip(-1), images)


@functools.lru_cache(maxsize=16)
def _resize_matrix(source: int, target: int, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(target, source) weights of 1-D bilinear resizing, exactly as ``F.interpolate`` computes them
    (``align_corners=False``, antialiased when shrinking): the interpolation of each unit vector, in float64 on
    the CPU so the weights are rounded once, then cast to ``dtype`` before moving (MPS has no float64)."""
    unit_vectors = torch.eye(source, dtype=torch.float64).reshape(source, 1, 1, source)  # (source images, 1, 1, w)
    resized = F.interpolate(unit_vectors, size=(1, target), mode="bilinear", align_corners=False,
                            antialias=target < source)
    return resized.reshape(source, target).T.contiguous().to(dtype).to(device)


def resize_bilinear(images: torch.Tensor, size: int) -> torch.Tensor:
    """Float (B, C, h, w) -> (B, C, size, size) with ``F.interpolate``'s bilinear weights (``align_corners=False``,
    antialiased when shrinking). Bilinear resizing is separable: the columns are resized by one matrix product,
    then the rows by another, or, when ``size`` is a whole multiple of ``h`` (32 -> 224: 7x) and no gradient is
    needed, by the two-tap form of :func:`_upscale_rows` (it writes through ``out=``, which autograd refuses). On
    CPU both are several times faster than the interpolation kernel."""
    height, width = images.shape[-2:]
    cols = _resize_matrix(width, size, images.device, images.dtype)
    needs_grad = torch.is_grad_enabled() and images.requires_grad
    if size > height and size % height == 0 and not needs_grad:
        return _upscale_rows(images, size // height, cols)
    rows = _resize_matrix(height, size, images.device, images.dtype)
    return rows @ images @ cols.T


def _upscale_rows(images: torch.Tensor, factor: int, cols: torch.Tensor) -> torch.Tensor:
    """Resize the columns with ``cols`` (size, w), then upscale the rows by the whole ``factor``, bilinearly.

    Output row ``k * factor + p`` samples source row ``k + (p + 0.5) / factor - 0.5``: between rows k-1 and k for
    the first half of the phases p, between k and k+1 for the rest, with a weight that depends on p alone, and
    the edge row repeated past the edges. So each phase is one ``lerp`` of two shifted views of the edge-padded
    rows, written into its strided slice of the output: two taps per output pixel instead of the h multiply-adds
    of a matrix product, and the large tensor written once. On CPU the batch goes in chunks of about 1 MiB of
    source, so the source stays in cache while its output is written.
    """
    batch, channels, height, _ = images.shape
    padded = torch.cat([images[..., :1, :], images, images[..., -1:, :]], dim=-2) @ cols.T  # (B, C, h + 2, size)
    size = padded.shape[-1]
    out = padded.new_empty(batch, channels, height, factor, size)
    chunk = max(1, batch)  # one launch per phase on accelerators; about 1 MiB of source per chunk on CPU
    if images.device.type == "cpu":
        chunk = max(1, (1 << 20) // (padded.shape[1:].numel() * padded.element_size()))
    for start in range(0, batch, chunk):
        source, target = padded[start:start + chunk], out[start:start + chunk]
        for phase in range(factor):
            offset = (phase + 0.5) / factor - 0.5
            first, weight = (0, 1.0 + offset) if offset < 0 else (1, offset)
            torch.lerp(source[..., first:first + height, :], source[..., first + 1:first + 1 + height, :], weight,
                       out=target[..., phase, :])
    return out.view(batch, channels, height * factor, size)


class BatchPreprocessor:
    """Callable ``(uint8 images, labels, train) -> (normalised float images, labels or soft labels)``."""

    def __init__(self, spec: InputSpec, augment: AugmentRecipe | None = None, num_classes: int = 0):
        self.spec = spec
        self.augment = augment or AugmentRecipe(random_crop_padding=0, horizontal_flip=False)
        self.auto_augment = {"randaugment": v2.RandAugment, "trivialaugment": v2.TrivialAugmentWide}.get(
            self.augment.auto_augment, lambda: None)()
        mixers = []
        if self.augment.mixup_alpha > 0:
            mixers.append(v2.MixUp(alpha=self.augment.mixup_alpha, num_classes=num_classes))
        if self.augment.cutmix_alpha > 0:
            mixers.append(v2.CutMix(alpha=self.augment.cutmix_alpha, num_classes=num_classes))
        self.mixer = v2.RandomChoice(mixers) if mixers else None

    def resize_and_normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, h, w) -> float (B, 3, size, size), resized to the spec's size and normalised.

        Normalising at the stored size first gives the same values (a per-channel affine map commutes with
        interpolation, whose weights sum to one) and writes the large tensor once.
        """
        size = self.spec.image_size
        mean = torch.tensor(self.spec.mean, device=images.device)[None, :, None, None]
        std = torch.tensor(self.spec.std, device=images.device)[None, :, None, None]
        x = (images.float().div_(255.0) - mean) / std
        if x.shape[-2:] != (size, size):
            x = resize_bilinear(x, size)
        return x

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, train: bool,
                 generator: torch.Generator | None = None):
        if train:
            images = self._augment(images, generator)
        x = self.resize_and_normalize(images)
        if train and self.mixer is not None:
            x, labels = self.mixer(x, labels)
        return x, labels

    def _augment(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        generator = generator or torch.Generator(device="cpu").manual_seed(0)
        if self.augment.random_resized_crop:
            images = random_resized_crop(images, self.augment.random_resized_crop_scale,
                                         self.augment.random_resized_crop_ratio, generator)
        if self.augment.random_crop_padding > 0:
            images = random_crop_with_padding(images, self.augment.random_crop_padding, generator)
        if self.augment.horizontal_flip:
            images = random_horizontal_flip(images, generator)
        if self.auto_augment is not None:  # one policy draw per image, as in the per-sample pipelines
            images = torch.stack([self.auto_augment(image) for image in images])
        return images


def denormalize(pixel_values: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """Normalised (B, 3, H, W) back to [0, 1] RGB, for overlays."""
    mean = torch.tensor(spec.mean, device=pixel_values.device)[None, :, None, None]
    std = torch.tensor(spec.std, device=pixel_values.device)[None, :, None, None]
    return (pixel_values * std + mean).clamp(0, 1)
