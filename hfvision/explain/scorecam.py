"""Score-CAM (Wang et al. 2020, arXiv:1910.01279): a gradient-free class activation map.

Each channel of the target layer (the Grad-CAM layer of the family registry, read as a (B, C, h, w) grid) is
upsampled to the input size, min-max scaled to [0, 1] and used as a mask on the input; the model's logit for the
explained class on each masked input is that channel's score, the scores are softmaxed over the channels
(Algorithm 1 of the paper, as pytorch-grad-cam does it) and the map is ``ReLU(sum_k weight_k * A_k)``.

Cost: one forward pass per channel per image (ViT-Ti: 192, ResNet-18: 512), run ``batch_size`` masked images
at a time. pytorch-grad-cam has a Score-CAM, but needs OpenCV and a reshape function per family; the layer and
token layout already live in ``hfvision.models.families``, so this is the algorithm on top of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hfvision.explain.gradcam import _patch_count, find_target, named_target
from hfvision.models.families import ExplainLayer
from hfvision.models.outputs import logits_of


def layer_grid(target: ExplainLayer, output) -> torch.Tensor:
    """The target layer's output as a (B, C, h, w) grid: maps as they are, channels-last maps permuted, token
    sequences without their prefix tokens (CLS, registers) in row-major grid order."""
    hidden = output[0] if isinstance(output, tuple) else output
    if target.layout == "nchw":
        return hidden
    if target.layout == "nhwc":
        return hidden.permute(0, 3, 1, 2)
    prefix, h, w = _patch_count(hidden.shape[1], target.prefix_tokens)
    return hidden[:, prefix:].transpose(1, 2).reshape(hidden.shape[0], hidden.shape[2], h, w)


class ScoreCam:
    """Score-CAM heat maps in [0, 1] at the input's size: ``ScoreCam(model)(pixel_values, target=None)``."""

    def __init__(self, model: nn.Module, layer: str | None = None, prefix_tokens: int | None = None,
                 batch_size: int = 64):
        self.model = model.eval()
        self.target = named_target(model, layer, prefix_tokens) if layer else find_target(model)
        self.batch_size = batch_size

    @torch.no_grad()
    def _activations(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen = []
        handle = self.target.module.register_forward_hook(lambda m, i, o: seen.append(layer_grid(self.target, o)))
        try:
            logits = logits_of(self.model, pixel_values)
        finally:
            handle.remove()
        return seen[0].float(), logits

    @torch.no_grad()
    def _channel_scores(self, image: torch.Tensor, masks: torch.Tensor, target: int) -> torch.Tensor:
        """The explained class's logit for ``image`` under each mask (C, H, W), ``batch_size`` at a time."""
        scores = []
        for start in range(0, len(masks), self.batch_size):
            masked = image[None] * masks[start:start + self.batch_size, None]
            scores.append(logits_of(self.model, masked)[:, target].float())
        return torch.cat(scores)

    def __call__(self, pixel_values: torch.Tensor, target: torch.Tensor | int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Heat maps (B, H, W) normalised per image to [0, 1], and the explained class per image."""
        activations, logits = self._activations(pixel_values)
        if target is None:
            target = logits.argmax(dim=1)
        elif isinstance(target, int):
            target = torch.full((pixel_values.shape[0],), target, dtype=torch.long)
        size = tuple(pixel_values.shape[-2:])
        maps = []
        for image, grid, explained in zip(pixel_values, activations, target.tolist()):
            masks = F.interpolate(grid[None], size=size, mode="bilinear", align_corners=False)[0]  # (C, H, W)
            low = masks.flatten(1).min(dim=1).values[:, None, None]
            high = masks.flatten(1).max(dim=1).values[:, None, None]
            masks = (masks - low) / (high - low).clamp_min(1e-12)  # a constant channel masks to zeros
            weights = torch.softmax(self._channel_scores(image, masks.to(image.dtype), explained), dim=0)
            maps.append(torch.relu((weights[:, None, None] * grid).sum(dim=0)))
        cam = F.interpolate(torch.stack(maps)[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12)[:, None, None]
        return cam / peak, target
