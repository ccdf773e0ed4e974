"""PCA of pooled features: what a model's classifier sees, projected to 2D, coloured by class.

The pooled feature is the classifier's input, captured by a forward pre-hook on the head, so it is the same
thing for every family (CLS token or mean of patch tokens for ViTs, pooled map for Swin and ResNets).
"""

from __future__ import annotations

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from sklearn.decomposition import PCA

from hfvision.models.module_tree import find_classifier


@torch.no_grad()
def pooled_features(model, pixel_batches) -> np.ndarray:
    """(N, D) classifier inputs for an iterable of normalised pixel batches."""
    model.eval()
    captured = []
    handle = find_classifier(model).register_forward_pre_hook(lambda m, args: captured.append(args[0].flatten(1).cpu()))
    try:
        for pixels in pixel_batches:
            model(pixel_values=pixels)
    finally:
        handle.remove()
    return torch.cat(captured).float().numpy()


def project(features: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """2D coordinates and the explained-variance ratio of the two components."""
    pca = PCA(n_components=2, random_state=seed)
    return pca.fit_transform(features), pca.explained_variance_ratio_


def plot_pca(panels: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], label_names: list[str], path) -> None:
    """One scatter per model: ``panels[name] = (coords (N, 2), labels (N,), explained variance (2,))``."""
    fig = Figure(figsize=(5.5 * len(panels) + 1.5, 5))
    axes = fig.subplots(1, len(panels), squeeze=False)
    cmap = matplotlib.colormaps["tab10" if len(label_names) <= 10 else "tab20"]
    for ax, (name, (coords, labels, variance)) in zip(axes[0], panels.items()):
        for index, label in enumerate(label_names):
            chosen = labels == index
            ax.scatter(coords[chosen, 0], coords[chosen, 1], s=6, alpha=0.7, color=cmap(index % cmap.N), label=label)
        ax.set_title(f"{name}\n(PC1+PC2 explain {100 * variance.sum():.1f}% of variance)", fontsize=9)
        ax.set_xlabel(f"PC1 ({100 * variance[0]:.1f}%)")
        ax.set_ylabel(f"PC2 ({100 * variance[1]:.1f}%)")
    axes[0, -1].legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
