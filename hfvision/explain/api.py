"""Explain predictions: heat maps for batches, per-class grids, model comparisons, feature PCA figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hfvision.data.images import UnreadableImage, load_pixels
from hfvision.data.sources import ImageSplit
from hfvision.data.synthetic import make_images
from hfvision.data.transforms import BatchPreprocessor
from hfvision.errors import HfvisionError
from hfvision.explain.figures import plot_heatmap_grid, to_rgb
from hfvision.explain.gradcam import GradCam
from hfvision.explain.pca import plot_pca, pooled_features, project
from hfvision.explain.rollout import attention_rollout
from hfvision.spec import InputSpec

METHODS = ("gradcam", "rollout")


def load_image(path: str | Path, size: int, crop_pct: float | None = None) -> torch.Tensor:
    """An image file as the data path decodes it (any mode to RGB, the resize policy, ``size``): uint8
    (1, 3, size, size)."""
    try:
        return load_pixels(path, size, crop_pct=crop_pct)
    except UnreadableImage as exc:
        raise HfvisionError(f"--image: {exc}") from None


def heatmaps(model, spec: InputSpec, images: torch.Tensor, method: str = "gradcam",
             target: int | None = None,
             constant_norm_scale: bool = True) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """(heat maps (B, H, W), predicted/explained class ids, normalised pixels) for uint8 images.
    ``constant_norm_scale=False`` gives plain gradients through LayerNorms (see ``hfvision.explain.gradcam``)."""
    if method not in METHODS:
        raise HfvisionError(f"--method: '{method}' is not one of {', '.join(METHODS)}")
    device = next(model.parameters()).device
    pixels = BatchPreprocessor(spec).resize_and_normalize(images.to(device))
    if method == "gradcam":
        heat, classes = GradCam(model, constant_norm_scale=constant_norm_scale)(pixels, target)
    else:
        heat = attention_rollout(model, pixels)
        classes = model(pixel_values=pixels).logits.argmax(dim=1) if target is None else torch.full(
            (pixels.shape[0],), target)
    return heat.cpu().numpy(), classes.cpu().numpy(), pixels


def peak_in_box_fraction(heat: np.ndarray, boxes: np.ndarray) -> float:
    """Fraction of heat maps (B, H, W) whose peak pixel lies inside its box (x0, y0, x1, y1; ends exclusive)."""
    peaks = heat.reshape(len(heat), -1).argmax(1)
    rows, cols = np.divmod(peaks, heat.shape[-1])
    inside = (boxes[:, 0] <= cols) & (cols < boxes[:, 2]) & (boxes[:, 1] <= rows) & (rows < boxes[:, 3])
    return float(inside.mean()) if len(inside) else 0.0


def synthetic_localization(model, spec: InputSpec, method: str = "gradcam", count: int = 200,
                           constant_norm_scale: bool = True) -> dict:
    """The known-answer check on fresh synthetic images: for correctly classified ones, how often the heat map
    peaks inside the shape's bounding box."""
    images, labels, boxes = make_images(count, spec.image_size, seed=1)
    heat, predicted, _ = heatmaps(model, spec, torch.from_numpy(images).permute(0, 3, 1, 2), method,
                                  constant_norm_scale=constant_norm_scale)
    correct = predicted == labels
    return {"method": method, "images": count, "accuracy": float(correct.mean()),
            "peak_in_box": peak_in_box_fraction(heat[correct], boxes[correct])}


def first_index_per_class(labels: torch.Tensor, num_classes: int) -> list[int]:
    """The first image of each class present in ``labels``, in class order."""
    found = {}
    for index, label in enumerate(labels.tolist()):
        found.setdefault(label, index)
        if len(found) == num_classes:
            break
    return [found[c] for c in sorted(found)]


def compare_heatmaps(models: dict[str, tuple[object, InputSpec]], images: torch.Tensor, path,
                     true_labels: list[str] | None = None, method: str = "gradcam") -> None:
    """Rows: models; columns: images; titles: predicted class (and the true one when known)."""
    rows, shown = {}, None
    for name, (model, spec) in models.items():
        heat, classes, pixels = heatmaps(model, spec, images, method)
        names = [model.config.id2label[int(c)] for c in classes]
        rows[name] = (heat, [f"pred: {n}" for n in names])
        if shown is None:
            shown = to_rgb(pixels, spec)
    titles = [f"true: {t}" for t in true_labels] if true_labels else None
    plot_heatmap_grid(shown, rows, path, column_titles=titles)


def per_class_grid(model, spec: InputSpec, split: ImageSplit, label_names: list[str], path,
                   method: str = "gradcam", name: str = "model") -> None:
    """One image per class with its heat map: the grid a run writes when ``eval.explain`` is on."""
    indices = first_index_per_class(split.labels, len(label_names))
    images = split.pixels[indices]
    compare_heatmaps({name: (model, spec)}, images, path,
                     true_labels=[label_names[int(split.labels[i])] for i in indices], method=method)


def pca_figure(models: dict[str, tuple[object, InputSpec]], split: ImageSplit, label_names: list[str], path,
               batch_size: int = 256) -> dict[str, list[float]]:
    """PCA of pooled features per model, side by side; returns each model's explained-variance ratios."""
    panels, variances = {}, {}
    for name, (model, spec) in models.items():
        preprocess = BatchPreprocessor(spec)
        device = next(model.parameters()).device
        batches = (preprocess.resize_and_normalize(split.pixels[i:i + batch_size].to(device))
                   for i in range(0, len(split), batch_size))
        coords, variance = project(pooled_features(model, batches))
        panels[name] = (coords, split.labels.numpy(), variance)
        variances[name] = variance.tolist()
    plot_pca(panels, label_names, path)
    return variances
