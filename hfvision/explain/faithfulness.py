"""Is a heat map faithful to what the model uses? Measured, not looked at.

- **Deletion and insertion** (Petsiuk et al. 2018, RISE, arXiv:1806.07421): remove (deletion) or reveal
  (insertion) the input's pixels in the order the heat map ranks them, in ``steps`` equal parts, and record the
  explained class's probability; the score is the area under that curve over the fraction of pixels (0 to 1).
  A faithful map has a low deletion AUC (the class goes as soon as its evidence does) and a high insertion AUC.
  Removed pixels become 0 after normalisation (the dataset's mean colour); insertion starts from a Gaussian blur
  of the image (sigma 1/8 of the side; see ``_blurred``).
- **ROAD** (Rong et al. 2022, "Remove and Debias", arXiv:2202.00449): the same orders, but removed pixels are
  filled by noisy linear imputation from their neighbours (``noisy_linear_impute``) instead of a constant, so the
  shape of the removed set no longer tells the model where the evidence was. MoRF removes the most relevant
  pixels first (low AUC is faithful, like deletion), LeRF the least relevant first (high AUC is faithful). All
  pixels removed leaves nothing to impute from: that end of both curves is the mean-colour image.
- **Model randomisation** (Adebayo et al. 2018, arXiv:1810.03292): re-initialise the weights top-down (the head
  alone, then every layer) and compare the maps with the trained model's by Spearman rank correlation. Maps that
  barely change do not depend on what the model learned. A constant map ranks nothing and counts as 0.
- **The random baseline**: smooth random maps (uniform noise on a 7 x 7 grid, upsampled), what every method must
  beat; being independent of the model, it fails the randomisation check by construction.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn
from torchvision.transforms.v2 import functional as TF

from hfvision.models.outputs import logits_of
from hfvision.models.module_tree import find_classifier

RANDOMISATION_STAGES = ("head", "all")


def random_maps(count: int, size: int, seed: int = 0, cells: int = 7) -> torch.Tensor:
    """(count, size, size) smooth random heat maps in [0, 1], the same for the same seed."""
    noise = torch.rand(count, 1, cells, cells, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def pixel_ranks(heat: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """(B, H*W): each pixel's place in its map's order, 0 for the most important; ties (flat regions, an all-zero
    map) broken by a seeded random order rather than by position."""
    flat = heat.flatten(1).float()
    tie_break = torch.rand(flat.shape, generator=torch.Generator().manual_seed(seed))
    order = torch.from_numpy(np.lexsort((tie_break.numpy(), -flat.cpu().numpy()), axis=-1))
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1]).expand_as(order).contiguous())
    return ranks


def _blurred(pixels: torch.Tensor) -> torch.Tensor:
    """The insertion curve's start: a Gaussian blur with sigma 1/8 of the side (28 px at 224), which removes the
    object's evidence also from upsampled low-resolution images (CIFAR at 224 px), where the paper's sigma of 5 px
    left the class readable from the start."""
    sigma = pixels.shape[-1] / 8
    kernel = 2 * math.ceil(2 * sigma) + 1
    return TF.gaussian_blur(pixels, [kernel, kernel], [sigma, sigma])


@torch.no_grad()
def _class_probability(model: nn.Module, inputs: torch.Tensor, target: int, batch_size: int) -> torch.Tensor:
    parts = [torch.softmax(logits_of(model, inputs[i:i + batch_size]).float(), dim=1)[:, target]
             for i in range(0, len(inputs), batch_size)]
    return torch.cat(parts).cpu()


def deletion_insertion(model: nn.Module, pixels: torch.Tensor, heat: torch.Tensor, target: torch.Tensor,
                       steps: int = 16, batch_size: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    """Per image: ``deletion`` and ``insertion`` AUC (B,), and their ``curves`` (B, 2, steps + 1), for normalised
    ``pixels`` (B, C, H, W), maps ``heat`` (B, H, W) at the same size and the explained classes ``target``."""
    model.eval()
    ranks = pixel_ranks(heat, seed).to(pixels.device)
    shown = torch.round(torch.linspace(0, 1, steps + 1) * ranks.shape[1]).long().to(pixels.device)
    blurred = _blurred(pixels)
    curves = []
    for image, soft, rank, explained in zip(pixels, blurred, ranks, target.tolist()):
        mask = (rank[None] < shown[:, None]).view(steps + 1, 1, *image.shape[-2:])  # the first k pixels, per step
        deleted = torch.where(mask, torch.zeros_like(image), image)
        inserted = torch.where(mask, image, soft)
        probability = _class_probability(model, torch.cat([deleted, inserted]), explained, batch_size)
        curves.append(probability.view(2, steps + 1))
    curves = torch.stack(curves)
    auc = torch.trapezoid(curves, dx=1.0 / steps, dim=-1)
    return {"deletion": auc[:, 0], "insertion": auc[:, 1], "curves": curves}


# ROAD's neighbour weights: 1/6 for the four direct neighbours, 1/12 for the four diagonal ones.
_NEIGHBOURS = tuple((dy, dx, 1 / 6 if dy == 0 or dx == 0 else 1 / 12)
                    for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))


def noisy_linear_impute(image: torch.Tensor, removed: torch.Tensor, noise: float = 0.01,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """ROAD's noisy linear imputation: ``image`` (C, H, W) with the pixels where ``removed`` (H, W) is true
    replaced by the solution of the linear system "each removed pixel is the weighted mean of its in-image
    neighbours" (known neighbours fixed, 1/6 direct, 1/12 diagonal), plus Gaussian noise of std ``noise`` (in the
    image's own units). A linear ramp is filled exactly. Removing every pixel leaves the system singular: the
    caller handles that end."""
    height, width = removed.shape
    missing = np.flatnonzero(removed.cpu().numpy().ravel())
    if len(missing) == 0:
        return image.clone()
    if len(missing) == height * width:
        raise ValueError("noisy_linear_impute: every pixel is removed, nothing to impute from")
    values = image.detach().cpu().double().numpy().reshape(image.shape[0], -1)
    variable = np.full(height * width, -1)
    variable[missing] = np.arange(len(missing))
    row, col = np.divmod(missing, width)
    diagonal = np.zeros(len(missing))
    known_sum = np.zeros((len(missing), image.shape[0]))
    rows, cols, weights = [], [], []
    for dy, dx, weight in _NEIGHBOURS:
        inside = (row + dy >= 0) & (row + dy < height) & (col + dx >= 0) & (col + dx < width)
        neighbour = (row + dy) * width + col + dx
        diagonal[inside] += weight
        neighbour_variable = np.where(inside, variable[np.where(inside, neighbour, 0)], -1)
        also_missing = inside & (neighbour_variable >= 0)
        rows.append(np.flatnonzero(also_missing))
        cols.append(neighbour_variable[also_missing])
        weights.append(np.full(int(also_missing.sum()), -weight))
        known = inside & (neighbour_variable < 0)
        known_sum[known] += weight * values[:, neighbour[known]].T
    system = scipy.sparse.csc_matrix(
        (np.concatenate([diagonal, *weights]),
         (np.concatenate([np.arange(len(missing)), *rows]), np.concatenate([np.arange(len(missing)), *cols]))),
        shape=(len(missing), len(missing)))
    solved = scipy.sparse.linalg.spsolve(system, known_sum).reshape(len(missing), -1)
    filled = values.copy()
    filled[:, missing] = solved.T
    result = torch.from_numpy(filled).view(image.shape).to(image.dtype)
    if noise:
        jitter = torch.randn(image.shape[0], len(missing), generator=generator).to(image.dtype) * noise
        result.view(image.shape[0], -1)[:, missing] += jitter
    return result.to(image.device)


def road(model: nn.Module, pixels: torch.Tensor, heat: torch.Tensor, target: torch.Tensor, steps: int = 16,
         batch_size: int = 64, seed: int = 0, noise: float = 0.01, grid: int = 56) -> dict[str, torch.Tensor]:
    """Per image: ROAD's ``morf`` (most relevant removed first) and ``lerf`` (least relevant first) AUC (B,) over
    the removed fraction 0 to 1, and their ``curves`` (B, 2, steps + 1).

    Removal and imputation work on a grid of at most ``grid`` x ``grid`` cells (2 x 2 pixels at 112 px, 4 x 4 at
    224; CIFAR's own detail is 32 x 32), which keeps each sparse solve to tens of milliseconds: the map is
    area-pooled to the grid and ranked there (ties broken by ``seed``), the image area-pooled and imputed there
    with ``noisy_linear_impute`` (seeded noise), and the imputed cells, upsampled bilinearly, replace the removed
    pixels while the kept ones stay as they were. All cells removed is the mean-colour image (0 after
    normalisation)."""
    model.eval()
    side = pixels.shape[-1]
    cells = min(grid, side)
    coarse_pixels = F.interpolate(pixels.float(), size=(cells, cells), mode="area") if cells < side else pixels
    coarse_heat = F.interpolate(heat.float()[:, None], size=(cells, cells), mode="area")[:, 0] if cells < side else heat
    ranks = pixel_ranks(coarse_heat, seed)
    cell_count = ranks.shape[1]
    removed_counts = torch.round(torch.linspace(0, 1, steps + 1) * cell_count).long().tolist()
    generator = torch.Generator().manual_seed(seed)
    curves = []
    for image, coarse, rank, explained in zip(pixels, coarse_pixels, ranks, target.tolist()):
        variants = []
        for order in (rank, cell_count - 1 - rank):  # MoRF: the top ranks go first; LeRF: the bottom ones
            for count in removed_counts:
                if count == cell_count:
                    variants.append(torch.zeros_like(image))
                    continue
                removed = (order < count).view(cells, cells).to(coarse.device)
                filled = noisy_linear_impute(coarse, removed, noise, generator)
                if cells < side:
                    filled = F.interpolate(filled[None], size=(side, side), mode="bilinear", align_corners=False)[0]
                    removed = F.interpolate(removed[None, None].float(), size=(side, side), mode="nearest")[0, 0] > 0
                variants.append(torch.where(removed, filled.to(image.dtype), image))
        probability = _class_probability(model, torch.stack(variants), explained, batch_size)
        curves.append(probability.view(2, steps + 1))
    curves = torch.stack(curves)
    auc = torch.trapezoid(curves, dx=1.0 / steps, dim=-1)
    return {"morf": auc[:, 0], "lerf": auc[:, 1], "curves": curves}


def _reinitialise(module: nn.Module) -> None:
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()
    else:  # parameters held directly (class token, position table, layer scale): the usual ViT init
        for parameter in module.parameters(recurse=False):
            nn.init.trunc_normal_(parameter, std=0.02)


def randomised_copy(model: nn.Module, stage: str, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with its weights re-initialised top-down: ``"head"`` the classifier only, ``"all"``
    every module that holds parameters, from the head to the patch embedding (Adebayo et al.'s cascade, run to the
    bottom). The model itself is untouched."""
    if stage not in RANDOMISATION_STAGES:
        raise ValueError(f"stage: '{stage}' is not one of {', '.join(RANDOMISATION_STAGES)}")
    randomised = copy.deepcopy(model).eval()
    if stage == "head":
        modules = [m for m in find_classifier(randomised).modules() if any(True for _ in m.parameters(recurse=False))]
    else:
        modules = [m for m in randomised.modules() if any(True for _ in m.parameters(recurse=False))][::-1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.no_grad():
            for module in modules:
                _reinitialise(module)
    return randomised


def rank_correlation(first: torch.Tensor, second: torch.Tensor, side: int = 56) -> np.ndarray:
    """Spearman rank correlation per image between maps (B, H, W), compared at most ``side`` x ``side`` (area
    pooled); a constant map gives 0."""
    def pooled(maps: torch.Tensor) -> np.ndarray:
        maps = maps.float()[:, None]
        if maps.shape[-1] > side:
            maps = F.adaptive_avg_pool2d(maps, side)
        return maps.flatten(1).cpu().numpy()

    correlations = []
    for a, b in zip(pooled(first), pooled(second)):
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            correlations.append(0.0)
        else:
            correlations.append(float(spearmanr(a, b).statistic))
    return np.asarray(correlations)

