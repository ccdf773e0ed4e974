"""The built-in ``synthetic`` dataset: coloured shapes at random positions on noise.

Each class is one shape in one colour, drawn at a random position and size on a noisy grey
background, so the class is visible, learnable in a minute on a CPU, and localised: the shape's
bounding box (``bbox`` = x0, y0, x1, y1, exclusive ends) is the known answer for Grad-CAM tests.
The dataset is fixed (its own seed), independent of a recipe's seed, like any real dataset.
"""

from __future__ import annotations

import functools

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Sequence, Value

CLASSES = ("red_square", "green_circle", "blue_triangle", "yellow_cross", "magenta_ring", "cyan_bar")
_COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 220, 40),
            "magenta": (220, 50, 220), "cyan": (40, 220, 220)}


def _shape_mask(shape: str, size: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] + 0.5
    c = size / 2
    r = np.hypot(yy - c, xx - c)
    if shape == "square":
        return np.ones((size, size), bool)
    if shape == "circle":
        return r <= c
    if shape == "triangle":
        return np.abs(xx - c) <= yy / 2  # apex at the top, base along the bottom
    if shape == "cross":
        t = max(size // 4, 1)
        return (np.abs(yy - c) <= t) | (np.abs(xx - c) <= t)
    if shape == "ring":
        return (r <= c) & (r >= c * 0.55)
    if shape == "bar":
        return np.abs(yy - c) <= max(size // 5, 1)
    raise ValueError(shape)


def make_images(num_images: int, image_size: int = 32, seed: int = 0):
    """Return uint8 images (N, H, W, 3), labels (N,) and boxes (N, 4) as x0, y0, x1, y1."""
    rng = np.random.default_rng(seed)
    labels = np.arange(num_images) % len(CLASSES)
    rng.shuffle(labels)
    images = rng.normal(110, 35, size=(num_images, image_size, image_size, 3)).clip(0, 255)
    boxes = np.zeros((num_images, 4), np.int64)
    # shapes span 3/8 to 1/2 of the image: at least 1.5 cells of the coarsest (4x4, CIFAR ResNet) Grad-CAM grid
    low, high = 3 * image_size // 8, image_size // 2
    for i, label in enumerate(labels):
        colour_name, shape = CLASSES[label].split("_")
        size = int(rng.integers(low, high + 1))
        x0, y0 = (int(v) for v in rng.integers(0, image_size - size + 1, size=2))
        mask = _shape_mask(shape, size)
        colour = np.array(_COLOURS[colour_name]) + rng.normal(0, 12, 3)
        patch = images[i, y0:y0 + size, x0:x0 + size]
        patch[mask] = colour.clip(0, 255)
        ys, xs = np.nonzero(mask)
        boxes[i] = (x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1)
    return images.astype(np.uint8), labels, boxes


@functools.lru_cache(maxsize=2)  # a fixed dataset: generate once per process
def load_synthetic(num_train: int = 3000, num_test: int = 600, image_size: int = 32) -> DatasetDict:
    features = Features({"image": Image(), "label": ClassLabel(names=list(CLASSES)),
                         "bbox": Sequence(Value("int32"), length=4)})
    splits = {}
    for split, count, seed in (("train", num_train, 0), ("test", num_test, 1)):
        images, labels, boxes = make_images(count, image_size, seed)
        splits[split] = Dataset.from_dict(
            {"image": list(images), "label": labels.tolist(), "bbox": boxes.tolist()}, features=features)
    return DatasetDict(splits)
