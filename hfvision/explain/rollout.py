"""Attention rollout (Abnar & Zuidema 2020, arXiv:2005.00928): a gradient-free view for ViT-like models.

Per layer, head-averaged attention plus the identity (the residual path), rows renormalised, multiplied
through the layers; the pooled token's row over the patch tokens is the map (the CLS row, or the mean of
the patch rows for mean pooling). Needs attention weights: ScratchViT returns them from its explicit
softmax path; transformers models are switched to eager attention for the call; timm ViTs (the timm layout) are
read through their unfused attention path. Swin's windowed attention has no global rollout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hfvision.models.families import family_of


def _attentions(model: nn.Module, pixel_values: torch.Tensor):
    """A transformers model's attention weights (switched to eager attention for the call: SDPA returns none)."""
    previous = getattr(model.config, "_attn_implementation", None)
    if previous not in (None, "eager") and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    try:
        return getattr(model(pixel_values=pixel_values, output_attentions=True), "attentions", None)
    finally:
        if previous not in (None, "eager") and hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation(previous)


def _timm_attentions(model: nn.Module, pixel_values: torch.Tensor) -> list[torch.Tensor]:
    """A timm ViT's attention weights: timm returns none, but its unfused path passes them through ``attn_drop``
    (the same softmax, read by a forward hook)."""
    blocks = getattr(model.timm_model, "blocks", None)
    attention_modules = [getattr(block, "attn", None) for block in blocks] if blocks is not None else []
    if not attention_modules or not all(hasattr(a, "attn_drop") and hasattr(a, "fused_attn") for a in attention_modules):
        raise ValueError(f"{type(model.timm_model).__name__} (timm) does not expose its attention weights")
    seen, fused = [], [a.fused_attn for a in attention_modules]
    handles = [a.attn_drop.register_forward_hook(lambda m, i, o: seen.append(o)) for a in attention_modules]
    try:
        for module in attention_modules:
            module.fused_attn = False
        model(pixel_values=pixel_values)
    finally:
        for module, was in zip(attention_modules, fused):
            module.fused_attn = was
        for handle in handles:
            handle.remove()
    return seen


@torch.no_grad()
def attention_rollout(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Maps (B, H, W) in [0, 1] at the input's size."""
    model.eval()
    timm_model = getattr(model, "timm_model", None)
    attentions = _attentions(model, pixel_values) if timm_model is None else _timm_attentions(model, pixel_values)
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
    pooling = getattr(model.config, "pooling", None) or getattr(timm_model, "global_pool", "cls")
    if pooling in ("mean", "avg"):
        scores = rollout[:, prefix:, prefix:].mean(dim=1)
    else:
        scores = rollout[:, 0, prefix:]
    maps = scores.reshape(-1, 1, side, side)
    maps = F.interpolate(maps, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    maps = maps - maps.flatten(1).min(dim=1).values[:, None, None]
    return maps / maps.flatten(1).max(dim=1).values.clamp_min(1e-12)[:, None, None]
