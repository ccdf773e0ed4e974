"""Explain predictions: heat maps for batches, per-class grids, model comparisons, feature PCA figures."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from hfvision.data.images import UnreadableImage, load_pixels
from hfvision.data.sources import ImageSplit
from hfvision.data.synthetic import make_images
from hfvision.data.transforms import BatchPreprocessor
from hfvision.errors import HfvisionError
from hfvision.evaluation.compare import markdown_table
from hfvision.explain.faithfulness import (
    RANDOMISATION_STAGES,
    deletion_insertion,
    random_maps,
    randomised_copy,
    rank_correlation,
    road,
)
from hfvision.explain.figures import plot_heatmap_grid, to_rgb
from hfvision.explain.gradcam import GradCam
from hfvision.explain.occlusion import OcclusionMap
from hfvision.explain.pca import plot_pca, pooled_features, project
from hfvision.explain.rollout import attention_rollout
from hfvision.explain.scorecam import ScoreCam
from hfvision.models.outputs import logits_of
from hfvision.spec import InputSpec

METHODS = ("gradcam", "rollout", "scorecam", "occlusion")
# The rows of the faithfulness table: name -> (method, Grad-CAM's LN rule); "random" is the baseline.
FAITHFULNESS_ROWS = {"gradcam": ("gradcam", True), "gradcam-plain": ("gradcam", False), "rollout": ("rollout", True),
                     "scorecam": ("scorecam", True), "occlusion": ("occlusion", True), "random": ("random", True)}


def load_image(path: str | Path, size: int, crop_pct: float | None = None) -> torch.Tensor:
    """An image file as the data path decodes it (any mode to RGB, the resize policy, ``size``): uint8
    (1, 3, size, size)."""
    try:
        return load_pixels(path, size, crop_pct=crop_pct)
    except UnreadableImage as exc:
        raise HfvisionError(f"--image: {exc}") from None


def explain_pixels(model, pixels: torch.Tensor, method: str = "gradcam", target: torch.Tensor | int | None = None,
                   constant_norm_scale: bool = True, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(heat maps (B, H, W) in [0, 1], explained class per image) for normalised ``pixels`` at the model's input
    size. ``target`` None explains the predicted class."""
    if method not in METHODS:
        raise HfvisionError(f"--method: '{method}' is not one of {', '.join(METHODS)}")
    if method == "gradcam":
        return GradCam(model, constant_norm_scale=constant_norm_scale)(pixels, target)
    if method == "scorecam":
        return ScoreCam(model, batch_size=batch_size)(pixels, target)
    if method == "occlusion":
        return OcclusionMap(model, batch_size=batch_size)(pixels, target)
    heat = attention_rollout(model, pixels)  # class-agnostic
    if target is None:
        with torch.no_grad():
            target = logits_of(model, pixels).argmax(dim=1)
    elif isinstance(target, int):
        target = torch.full((pixels.shape[0],), target)
    return heat, target


def heatmaps(model, spec: InputSpec, images: torch.Tensor, method: str = "gradcam",
             target: int | None = None,
             constant_norm_scale: bool = True) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """(heat maps (B, H, W), predicted/explained class ids, normalised pixels) for uint8 images.
    ``constant_norm_scale=False`` gives plain gradients through LayerNorms (see ``hfvision.explain.gradcam``)."""
    device = next(model.parameters()).device
    pixels = BatchPreprocessor(spec).resize_and_normalize(images.to(device))
    heat, classes = explain_pixels(model, pixels, method, target, constant_norm_scale)
    return heat.float().cpu().numpy(), classes.cpu().numpy(), pixels  # float: a bf16 model's maps too


def peak_in_box_fraction(heat: np.ndarray, boxes: np.ndarray) -> float:
    """Fraction of heat maps (B, H, W) whose peak lies inside its box (x0, y0, x1, y1; ends exclusive). The peak is
    the centre of the pixels at the map's maximum: a single pixel for smooth maps, the middle of the plateau for
    piecewise-constant ones (occlusion's windows), where the first maximal pixel in raster order would be an
    artefact of the scan order."""
    inside = []
    for one, (x0, y0, x1, y1) in zip(heat, boxes):
        rows, cols = np.nonzero(one >= one.max() - 1e-6)
        row, col = rows.mean(), cols.mean()
        inside.append(x0 <= col < x1 and y0 <= row < y1)
    return float(np.mean(inside)) if inside else 0.0


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


def _row_maps(model, pixels: torch.Tensor, row: str, target: torch.Tensor, seed: int, batch_size: int) -> torch.Tensor:
    method, rule = FAITHFULNESS_ROWS[row]
    if method == "random":
        return random_maps(len(pixels), pixels.shape[-1], seed).to(pixels.device)
    return explain_pixels(model, pixels, method, target, constant_norm_scale=rule, batch_size=batch_size)[0]


def measure_faithfulness(model, spec: InputSpec, images: torch.Tensor, labels: torch.Tensor | None = None,
                         rows: tuple[str, ...] = tuple(FAITHFULNESS_ROWS), steps: int = 16, seed: int = 0,
                         batch_size: int = 64, with_road: bool = False) -> dict:
    """Each method's maps for uint8 ``images``, scored by deletion and insertion AUC (and ROAD's MoRF and LeRF AUC
    when ``with_road``) and by the model-randomisation check (``hfvision.explain.faithfulness``); the predicted
    class is the one explained. A method the model cannot give (rollout without attention weights) is listed in
    ``skipped`` with the reason."""
    device = next(model.parameters()).device
    pixels = BatchPreprocessor(spec).resize_and_normalize(images.to(device))
    with torch.no_grad():
        target = logits_of(model, pixels).argmax(dim=1)
    randomised = {stage: randomised_copy(model, stage, seed) for stage in RANDOMISATION_STAGES}
    table, maps, skipped = [], {}, {}
    for row in rows:
        start = time.perf_counter()
        try:
            heat = _row_maps(model, pixels, row, target, seed, batch_size)
        except ValueError as exc:
            skipped[row] = str(exc)
            continue
        seconds = (time.perf_counter() - start) / len(pixels)
        scores = deletion_insertion(model, pixels, heat, target, steps, batch_size, seed)
        if with_road:
            scores |= {f"road_{name}": auc for name, auc in road(model, pixels, heat, target, steps, batch_size,
                                                                  seed).items() if name != "curves"}
        result = {"method": row, "seconds_per_image": seconds}
        for metric in [name for name in scores if name != "curves"]:
            values = scores[metric].numpy()
            result[f"{metric}_auc"] = float(values.mean())
            result[f"{metric}_auc_sem"] = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
        for stage, model_copy in randomised.items():
            again = _row_maps(model_copy, pixels, row, target, seed, batch_size)
            result[f"spearman_{stage}_randomised"] = float(rank_correlation(heat, again).mean())
        table.append(result)
        maps[row] = heat.cpu().numpy()
    correct = None if labels is None else float((target.cpu() == labels.cpu()).float().mean())
    return {"rows": table, "skipped": skipped, "maps": maps, "pixels": pixels, "target": target.cpu(),
            "images": len(pixels), "steps": steps, "seed": seed, "accuracy_on_images": correct}


# The table's AUC columns: result key -> heading; the ROAD ones appear when they were measured.
AUC_COLUMNS = {"deletion": "deletion AUC (lower is better)", "insertion": "insertion AUC (higher is better)",
               "road_morf": "ROAD MoRF AUC (lower is better)", "road_lerf": "ROAD LeRF AUC (higher is better)"}


def faithfulness_markdown(result: dict) -> str:
    """The table: method x metric, AUCs as mean +- standard error over the images."""
    measured = [key for key in AUC_COLUMNS if all(f"{key}_auc" in row for row in result["rows"])]
    columns = ("method", *(AUC_COLUMNS[key] for key in measured), "rank corr., head re-initialised",
               "rank corr., all layers re-initialised", "s / image")
    rows = [dict(zip(columns, (
        row["method"], *(f"{row[f'{key}_auc']:.3f} ± {row[f'{key}_auc_sem']:.3f}" for key in measured),
        f"{row['spearman_head_randomised']:.2f}", f"{row['spearman_all_randomised']:.2f}",
        f"{row['seconds_per_image']:.3f}"))) for row in result["rows"]]
    rows += [dict.fromkeys(columns, "") | {"method": name, columns[1]: f"n/a: {reason}"}
             for name, reason in result["skipped"].items()]
    return markdown_table(rows, columns, cell=str)


def faithfulness_overlays(result: dict, spec: InputSpec, label_names: list[str], path, columns: int = 8) -> None:
    """One figure: a row per method, the same images in the columns, titled with the explained class."""
    shown = to_rgb(result["pixels"][:columns], spec)
    names = [label_names[int(c)] for c in result["target"][:columns]]
    rows = {row: (heat[:columns], names) for row, heat in result["maps"].items()}
    plot_heatmap_grid(shown, rows, path)
