"""Heat-map overlays on de-normalised images: model x image grids and one-image-per-class grids."""

from __future__ import annotations

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure

from hfvision.data.transforms import denormalize
from hfvision.spec import InputSpec


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGB [0, 1] image (H, W, 3) blended with the jet-coloured heat map (H, W) in [0, 1]."""
    coloured = matplotlib.colormaps["jet"](heat)[..., :3]
    return (1 - alpha) * image + alpha * coloured


def to_rgb(pixel_values: torch.Tensor, spec: InputSpec) -> np.ndarray:
    """Normalised (B, 3, H, W) -> (B, H, W, 3) in [0, 1]."""
    return denormalize(pixel_values.detach().cpu(), spec).permute(0, 2, 3, 1).numpy()


def plot_heatmap_grid(images: np.ndarray, rows: dict[str, tuple[np.ndarray, list[str]]], path,
                      column_titles: list[str] | None = None, show_input: bool = True) -> None:
    """One row per model (``rows[name] = (heat maps (B, H, W), titles)``), one column per image.

    The first row shows the inputs when ``show_input``; a shared colour bar reads the heat scale.
    """
    count = images.shape[0]
    row_count = len(rows) + int(show_input)
    fig = Figure(figsize=(1.9 * count + 1.2, 2.1 * row_count))
    axes = fig.subplots(row_count, count, squeeze=False)
    mappable = None
    row = 0
    if show_input:
        for j in range(count):
            axes[0, j].imshow(images[j])
            axes[0, j].set_title(column_titles[j] if column_titles else "", fontsize=8)
        row = 1
    for name, (heat, titles) in rows.items():
        for j in range(count):
            axes[row, j].imshow(overlay(images[j], heat[j]))
            mappable = axes[row, j].imshow(heat[j], cmap="jet", alpha=0.0, vmin=0, vmax=1)
            axes[row, j].set_title(titles[j], fontsize=8)
        axes[row, 0].text(-0.08, 0.5, name, transform=axes[row, 0].transAxes, rotation=90, ha="right",
                          va="center", fontsize=9)
        row += 1
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout(rect=(0.02, 0, 0.93, 1))
    if mappable is not None:
        fig.colorbar(mappable, ax=axes.ravel().tolist(), fraction=0.02, pad=0.01, label="relevance")
    fig.savefig(path, dpi=110)
