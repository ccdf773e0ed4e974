"""Is a heat map faithful to what the model uses? Measured, not looked at.

- **Deletion and insertion** (Petsiuk et al. 2018, RISE, arXiv:1806.07421): remove (deletion) or reveal
  (insertion) the input's pixels in the order the heat map ranks them, in ``steps`` equal parts, and record the
  explained class's probability; the score is the area under that curve over the fraction of pixels (0 to 1).
  A faithful map has a low deletion AUC (the class goes as soon as its evidence does) and a high insertion AUC.
  Removed pixels become 0 after normalisation (the dataset's mean colour); insertion starts from a Gaussian blur
  of the image (sigma 1/8 of the side; see ``_blurred``).
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

