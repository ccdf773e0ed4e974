"""One image to 8-bit RGB pixels, and one resize: the single place where pixels are made.

The data sources, the explain CLI and the demo all read images through ``load_rgb`` and resize through
``resize_rgb``, so a model is trained, explained and demoed on the same pixels.

``load_rgb`` reads a file path, bytes, a ``datasets`` image value (``{"bytes", "path"}``), a PIL image or an
array, applies the EXIF orientation (as ``datasets`` does), and converts every PIL mode to uint8 RGB:

- ``I;16`` (16-bit PNG/TIFF grayscale): scaled 65535 -> 255 (PIL's own ``convert`` clips at 255 instead, so
  almost every pixel of a 16-bit photo turns white); ``I`` (32-bit integer, the mode older Pillows give 16-bit
  files) is read on the same 0..65535 scale, values outside clipped; ``F`` (32-bit float) is read as 0..1, clipped.
- Transparency (``RGBA``, ``LA``, ``PA``, ``P`` or ``L``/``RGB`` with a transparent colour): composited onto white,
  as transformers' ``convert_to_rgb`` does, so a transparent background is white rather than whatever colour
  the hidden pixels happen to hold.
- Everything else (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, 8-bit ``RGB``): PIL's ``convert("RGB")``.

A file that cannot be read (missing, empty, not an image, truncated, a decompression bomb) raises
``UnreadableImage``: one line with the image's name and the reason.

``resize_rgb`` is the resize of ``BatchPreprocessor.resize_and_normalize`` (bilinear, antialiased when shrinking) done
on uint8 by torch's uint8 kernel: images resized at decode time and images resized per batch differ by at most one
level.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from hfvision.errors import HfvisionError

SIXTEEN_BIT_SCALE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


class UnreadableImage(HfvisionError):
    """An image file or value that does not decode; the message names it and says why."""


def _open(source, draft_size: int | None = None) -> Image.Image:
    """A loaded PIL image from any of ``load_rgb``'s sources (``Image.open`` is lazy: ``load`` decodes). With
    ``draft_size``, a JPEG is decoded at the smallest of its DCT scales (1/2, 1/4, 1/8) that leaves both sides at
    least ``draft_size``: a 2000x1500 photo for a 224 px model decodes at 500x375, several times faster and in a
    sixteenth of the memory."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        return Image.fromarray(source)
    if isinstance(source, dict):  # a datasets Image value with decode=False
        source = source["bytes"] if source.get("bytes") is not None else source.get("path")
        if source is None:
            raise UnreadableImage("image value has neither bytes nor a path")
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise OSError("empty file")
        image = Image.open(io.BytesIO(source))
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError("no such file")
        if path.stat().st_size == 0:
            raise OSError("empty file")
        image = Image.open(path)
    if draft_size is not None and image.format == "JPEG":
        image.draft(None, (draft_size, draft_size))
    image.load()
    return image


def unreadable_reason(exc: Exception) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "not an image file PIL can read"
    if isinstance(exc, Image.DecompressionBombError):
        return "too many pixels (PIL's decompression-bomb limit)"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.removeprefix("[Errno 2] ")


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """A decoded PIL image, any mode, as uint8 (H, W, 3); see the module docstring for each mode."""
    if image.mode in SIXTEEN_BIT_SCALE_MODES:
        values = np.asarray(image).astype(np.float64)
        return _gray_to_rgb(np.round(np.clip(values, 0, 65535) * (255 / 65535)).astype(np.uint8))
    if image.mode == "F":
        return _gray_to_rgb(np.round(np.clip(np.asarray(image, dtype=np.float64), 0, 1) * 255).astype(np.uint8))
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.array(image if image.mode == "RGB" else image.convert("RGB"))  # one copy, writable


def _describe(source) -> str:
    """How an error names ``source``: its path when it has one."""
    if isinstance(source, dict):
        return str(source.get("path") or "image bytes")
    if isinstance(source, (str, Path)):
        return str(source)
    return "image"


def load_rgb(source, name: str | None = None, draft_size: int | None = None) -> np.ndarray:
    """``source`` (path, bytes, datasets image value, PIL image or array) as uint8 RGB (H, W, 3); a JPEG at the
    smallest DCT scale whose sides are all at least ``draft_size``, when given.

    Raises ``UnreadableImage`` naming ``name`` (default: the path, when there is one) and the reason."""
    try:
        opened = _open(source, draft_size)
        if opened is source:  # the caller's PIL image: transposed into a copy, never in place
            image = ImageOps.exif_transpose(opened)
        else:
            image = opened
            ImageOps.exif_transpose(image, in_place=True)  # ours: no copy of an upright photo
        array = to_rgb_array(image)
    except UnreadableImage as exc:
        raise UnreadableImage(f"{name or _describe(source)}: {exc}") from None
    except (OSError, SyntaxError, ValueError, TypeError, Image.DecompressionBombError) as exc:
        # PIL signals bad files with these: OSError (truncated, unidentified), SyntaxError (broken headers),
        # ValueError/TypeError (modes or arrays it cannot convert)
        raise UnreadableImage(f"{name or _describe(source)}: {unreadable_reason(exc)}") from None
    return array if array.flags.writeable else array.copy()  # np.asarray of a PIL image is read-only


def resize_rgb(array: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (size, size, 3) or (h, w, 3) for a pair: bilinear, antialiased when shrinking, by
    torch's uint8 kernel (the one torchvision uses for uint8 tensors, PIL's arithmetic): within 1 level of the
    per-batch float resize rounded, and 5x faster than it on a photo."""
    shape = (size, size) if isinstance(size, int) else tuple(size)
    if array.shape[:2] == shape:
        return array
    x = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None]  # channels-last strides: the fast path
    x = F.interpolate(x, size=shape, mode="bilinear", align_corners=False,
                      antialias=x.shape[-1] > shape[1] or x.shape[-2] > shape[0])
    return x[0].permute(1, 2, 0).numpy()


def _scale_size(size: int, crop_pct: float) -> int:
    """The shorter side timm resizes to before its centre crop of ``size``."""
    return math.floor(size / crop_pct)


def output_side(height: int, width: int, size: int, crop_pct: float | None = None) -> int:
    """The side of ``fit_to_input``'s (always square) result for an image of ``height`` x ``width``, known from the
    header alone: a store sizes its file before anything is decoded."""
    if crop_pct is None:
        return size if max(height, width) > size or height != width else height
    scale_size = _scale_size(size, crop_pct)
    if min(height, width) > scale_size:
        return size
    return max(1, round(min(height, width) * size / scale_size))


def draft_size(size: int, crop_pct: float | None = None) -> int:
    """The smallest side a decode may reduce an image to and still give ``fit_to_input`` what it needs."""
    return size if crop_pct is None else _scale_size(size, crop_pct)


def fit_to_input(array: np.ndarray, size: int, crop_pct: float | None = None) -> np.ndarray:
    """The resize policy at decode time (``InputSpec``), so that memory per image is bounded by ``size``.

    With ``crop_pct`` (timm's eval transform): an image whose shorter side exceeds ``floor(size / crop_pct)`` is
    resized to that shorter side and centre-cropped to ``size``, as timm does; a smaller one keeps its central
    square of the same fraction, at its own resolution (upsampled per batch). Without: an image larger than
    ``size``, or not square, is squashed to (size, size); a square one no larger keeps its pixels. The result is
    square, of side ``output_side``."""
    height, width = array.shape[:2]
    side = output_side(height, width, size, crop_pct)
    if crop_pct is None:
        return resize_rgb(array, size) if side != height or side != width else array
    scale_size = _scale_size(size, crop_pct)
    if min(height, width) > scale_size:  # timm's order and torchvision's arithmetic: Resize, then CenterCrop
        short, long = min(height, width), max(height, width)
        long = int(scale_size * long / short)
        new_h, new_w = (scale_size, long) if height <= width else (long, scale_size)
        array = resize_rgb(array, (new_h, new_w))
        top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
        return np.ascontiguousarray(array[top:top + size, left:left + size])
    top, left = (height - side) // 2, (width - side) // 2
    return np.ascontiguousarray(array[top:top + side, left:left + side])


def decode_fitted(source, size: int, crop_pct: float | None = None, name: str | None = None) -> np.ndarray:
    """``source`` decoded (JPEG draft scaling down to ``draft_size``) and fitted by the resize policy: uint8
    (s, s, 3) with s = ``output_side`` <= ``size``. Every path that turns a file into model pixels (the store,
    predict, explain, the demo) goes through here."""
    return fit_to_input(load_rgb(source, name, draft_size(size, crop_pct)), size, crop_pct)


def load_pixels(source, size: int, name: str | None = None, crop_pct: float | None = None) -> torch.Tensor:
    """``source`` decoded and resized for a model of input ``size`` by the resize policy (``fit_to_input``):
    uint8 (1, 3, size, size)."""
    array = resize_rgb(decode_fitted(source, size, crop_pct, name), size)
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None].contiguous()


def image_files(inputs: list[str | Path], key: str = "predict") -> list[Path]:
    """The files named, and every file under the folders named (recursively, sorted; hidden ones left out).
    A name that is neither, or no file at all, is one line naming ``key`` (the argument that gave them)."""
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.is_file()
                            and not any(part.startswith(".") for part in p.relative_to(item).parts))
        elif item.is_file():
            files.append(item)
        else:
            raise HfvisionError(f"{key}: {item} is neither a file nor a folder")
    if not files:
        raise HfvisionError(f"{key}: no files under {', '.join(map(str, inputs))}")
    return files
