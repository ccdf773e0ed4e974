"""Attention rollout (Abnar & Zuidema 2020, arXiv:2005.00928): a gradient-free view for ViT-like models.

Per layer, head-averaged attention plus the identity (the residual path), rows renormalised, multiplied
through the layers; the pooled token's row over the patch tokens is the map (the CLS row, or the mean of
the patch rows for mean pooling). Needs attention weights: ScratchViT returns them from its explicit
softmax path; transformers models are switched to eager attention for the call.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hfvision.models.families import family_of


@torch.no_grad()
def attention_rollout(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Maps (B, H, W) in [0, 1] at the input's size."""
    model.eval()
    previous = getattr(model.config, "_attn_implementation", None)
    if previous not in (None, "eager") and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")  # SDPA returns no weights
    try:
        attentions = getattr(model(pixel_values=pixel_values, output_attentions=True), "attentions", None)
    finally:
        if previous not in (None, "eager") and hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation(previous)
    if not attentions:
        raise ValueError(f"{type(model).__name__} returns no attention weights; use Grad-CAM")
    if attentions[0].shape[0] != pixel_values.shape[0]:  # Swin: one attention matrix per window
        raise ValueError(f"{type(model).__name__} attends within windows; rollout needs global attention")
    tokens = attentions[0].shape[-1]
    eye = torch.eye(tokens, device=pixel_values.device)
    rollout = eye.expand(pixel_values.shape[0], tokens, tokens)
    for attention in attentions:
        mixed = attention.mean(dim=1) + eye  # (B, N, N), heads averaged, residual added
        rollout = (mixed / mixed.sum(dim=-1, keepdim=True)) @ rollout
    prefix = family_of(model).prefix_tokens(model)
    if prefix is None:
        prefix = tokens - math.isqrt(tokens) ** 2
    side = math.isqrt(tokens - prefix)
    if getattr(model.config, "pooling", "cls") == "mean":
        scores = rollout[:, prefix:, prefix:].mean(dim=1)
    else:
        scores = rollout[:, 0, prefix:]
    maps = scores.reshape(-1, 1, side, side)
    maps = F.interpolate(maps, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    maps = maps - maps.flatten(1).min(dim=1).values[:, None, None]
    return maps / maps.flatten(1).max(dim=1).values.clamp_min(1e-12)[:, None, None]
