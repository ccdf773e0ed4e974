"""Grad-CAM (Selvaraju et al. 2017, arXiv:1610.02391) for every family, through Captum's ``LayerGradCam``.

Captum's ``LayerGradCam`` averages gradients over dims >= 2, so it is right on (B, C, h, w) maps and silently
wrong on the (B, N, C) token sequences transformers emit. A forward hook on the target layer routes its
patch tokens through :class:`TokenGrid`, a pass-through module whose output is the (B, C, h, w) grid (CLS and
register tokens held aside), and Captum targets that module. Values are unchanged; only the view differs.

Gradients through LayerNorm (the LN rule of Ali et al. 2022, arXiv:2202.07304). A LayerNorm divides by its
input's own standard deviation, so what follows it is invariant to the input's scale and the gradient is
orthogonal to the input: gradient x activation through a transformer sums to about zero and its sign is
arbitrary. On trained ScratchViTs whole classes came out with the shape's tokens strongly *negative*, and
Grad-CAM peaked on the shape in 31-78% of images. While attributing, every LayerNorm/RMSNorm is recomputed with
its scale held constant in the backward pass (a forward hook; forward values are unchanged), which lifted the
same models to 76-99% (README, Explanations). ``GradCam(..., constant_norm_scale=False)`` turns it off.

Target layers, per family (the registry in ``hfvision.models.families``):

- ViT-like (transformers ViT/DeiT/DINOv2, ScratchViT with any pooling): the last block's pre-attention norm.
  The final norm's patch tokens get no gradient under CLS pooling; the last block's norm1 output feeds the
  attention that CLS reads from, so its patch tokens do. Under mean pooling the final norm's tokens do get
  gradient, but by then attention has copied the class into every background token (their exact CAM is high
  everywhere but on the shape), so the same layer is used.
- Swin: the last stage's output, a row-major (h, w) grid of tokens without prefix.
- Convolutional nets (CIFAR ResNet-18, transformers ResNet, ...): the last stage's (B, C, h, w) output.
- Anything else: name the layer, ``GradCam(model, layer="dotted.module.path")``.
"""

from __future__ import annotations

import math

import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from hfvision.models.families import ExplainLayer, family_of
from hfvision.models.outputs import LogitsOnly


class TokenGrid(nn.Module):
    """Identity on values; the view Captum needs: (B, h*w, C) tokens or (B, h, w, C) maps -> (B, C, h, w)."""

    def forward(self, hidden: torch.Tensor, grid: tuple[int, int] | None) -> torch.Tensor:
        if grid is None:  # channels-last map (B, h, w, C)
            return hidden.permute(0, 3, 1, 2)
        batch, _, channels = hidden.shape
        return hidden.transpose(1, 2).reshape(batch, channels, *grid)  # tokens are in row-major grid order


def _norm_with_constant_scale(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    """Forward hook: the same normalised values, with the divisor detached (the LN rule, see the docstring)."""
    x = inputs[0]
    if isinstance(module, nn.LayerNorm):
        centred = x - x.mean(dim=-1, keepdim=True)
        scale = (centred.pow(2).mean(dim=-1, keepdim=True) + module.eps).sqrt()
    else:  # RMSNorm; eps=None means the dtype's eps, as in torch
        eps = module.eps if module.eps is not None else torch.finfo(x.dtype).eps
        centred, scale = x, (x.pow(2).mean(dim=-1, keepdim=True) + eps).sqrt()
    normalised = centred / scale.detach()
    if module.weight is not None:
        normalised = normalised * module.weight
    if getattr(module, "bias", None) is not None:
        normalised = normalised + module.bias
    return normalised


def _token_norms(model: nn.Module) -> list[nn.Module]:
    """LayerNorms/RMSNorms over the last dim (the transformer norms; BatchNorm is affine in eval mode)."""
    return [m for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.RMSNorm)) and len(m.normalized_shape) == 1]


def find_target(model: nn.Module) -> ExplainLayer:
    """The Grad-CAM layer for ``model``'s family (the registry in ``hfvision.models.families``)."""
    return family_of(model).explain_layer(model)


def named_target(model: nn.Module, layer: str, prefix_tokens: int | None = None) -> ExplainLayer:
    """A user-named layer; its layout (maps or tokens) is read off one forward pass."""
    try:
        module = model.get_submodule(layer)
    except AttributeError:
        raise ValueError(f"layer '{layer}' is not a module of {type(model).__name__}") from None
    seen = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(o[0] if isinstance(o, tuple) else o))
    size = getattr(model.config, "image_size", 224)
    size = size if isinstance(size, int) else size[0]
    with torch.no_grad():
        model(pixel_values=torch.zeros(1, getattr(model.config, "num_channels", 3), size, size,
                                       device=next(model.parameters()).device))
    handle.remove()
    return ExplainLayer(module, "nchw" if seen[0].dim() == 4 else "tokens", prefix_tokens)


def _patch_count(num_tokens: int, prefix: int | None) -> tuple[int, int, int]:
    """(prefix, h, w) for a square grid of patch tokens."""
    if prefix is None:
        side = math.isqrt(num_tokens)
        prefix = num_tokens - side * side
    side = math.isqrt(num_tokens - prefix)
    if side * side != num_tokens - prefix:
        raise ValueError(f"{num_tokens - prefix} patch tokens do not form a square grid")
    return prefix, side, side


class GradCam:
    """Grad-CAM heat maps in [0, 1] at the input's spatial size: ``GradCam(model)(pixel_values, target=None)``."""

    def __init__(self, model: nn.Module, layer: str | None = None, prefix_tokens: int | None = None,
                 constant_norm_scale: bool = True):
        self.model = model.eval()
        self.norms = _token_norms(model) if constant_norm_scale else []  # held at constant scale while attributing
        self.target = named_target(model, layer, prefix_tokens) if layer else find_target(model)
        self.token_grid = TokenGrid()
        # A (B, C, h, w) layer is read as is; token and channels-last layers through the TokenGrid view.
        captum_layer = self.target.module if self.target.layout == "nchw" else self.token_grid
        self.grad_cam = LayerGradCam(LogitsOnly(model), captum_layer)

    def _route_through_grid(self, module, inputs, output):
        """Forward hook on the target layer: same values, but flowing through ``token_grid``."""
        hidden = output[0] if isinstance(output, tuple) else output
        if self.target.layout == "nhwc":
            routed = self.token_grid(hidden, None).permute(0, 2, 3, 1)
        else:
            prefix, h, w = _patch_count(hidden.shape[1], self.target.prefix_tokens)
            grid = self.token_grid(hidden[:, prefix:], (h, w))  # (B, C, h, w)
            routed = torch.cat([hidden[:, :prefix], grid.flatten(2).transpose(1, 2)], dim=1)
        return (routed,) + tuple(output[1:]) if isinstance(output, tuple) else routed

    def __call__(self, pixel_values: torch.Tensor, target: torch.Tensor | int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Heat maps (B, H, W) normalised per image to [0, 1], and the explained class per image."""
        with torch.no_grad():
            logits = self.model(pixel_values=pixel_values).logits
        if target is None:
            target = logits.argmax(dim=1)
        elif isinstance(target, int):
            target = torch.full((pixel_values.shape[0],), target, dtype=torch.long)
        # Norm hooks first: the target layer may itself be a norm, and its routing hook must see the new output.
        handles = [norm.register_forward_hook(_norm_with_constant_scale) for norm in self.norms]
        if self.target.layout != "nchw":
            handles.append(self.target.module.register_forward_hook(self._route_through_grid))
        try:
            with torch.enable_grad():
                cam = self.grad_cam.attribute(pixel_values, target=target.tolist(), relu_attributions=True)
        finally:
            for handle in handles:
                handle.remove()
        cam = LayerAttribution.interpolate(cam, tuple(pixel_values.shape[-2:]), interpolate_mode="bilinear")
        cam = cam[:, 0].detach()
        peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12)[:, None, None]
        return cam / peak, target
