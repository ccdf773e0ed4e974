"""The family registry: what every stage needs to know about a kind of model, in one table.

- ``BUILT_IN``: the families hfvision builds from a config (``model.name: scratch_vit`` ...): config and model
  classes, architecture defaults, and whether saved dirs carry their code (``auto_map``).
- ``FAMILIES``: every family a checkpoint can belong to, found from ``config.model_type``: the layer Grad-CAM
  reads and its layout, and the prefix tokens (CLS, registers) in front of the patch tokens. The factory,
  tuning, Grad-CAM, rollout and the model card read these tables; none keeps its own list.

Layers are found by probing where module paths differ across transformers versions (``vit.encoder.layer`` in
4.x, ``vit.layers`` in 5.x).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from torch import nn
from transformers import SwinConfig, SwinForImageClassification

from hfvision.models.resnet_cifar import ResNetCifarConfig, ResNetCifarForImageClassification
from hfvision.models.scratch_vit import ScratchViTConfig, ScratchViTForImageClassification
from hfvision.models.tuning import NORM_TYPES, find_stages


@dataclass(frozen=True)
class BuiltInFamily:
    config_class: type
    model_class: type
    defaults: dict = field(default_factory=dict)
    ships_code: bool = True  # saved dirs carry the modelling code; loading elsewhere needs trust_remote_code


# Swin-T widths for 32x32 images: patch 2 and window 4 give a 16x16 -> 8x8 -> 4x4 token pyramid.
SCRATCH_SWIN_DEFAULTS = dict(image_size=32, patch_size=2, window_size=4, embed_dim=96, depths=[2, 6, 2],
                             num_heads=[3, 6, 12], drop_path_rate=0.1)
BUILT_IN = {
    "scratch_vit": BuiltInFamily(ScratchViTConfig, ScratchViTForImageClassification),
    "scratch_swin": BuiltInFamily(SwinConfig, SwinForImageClassification, SCRATCH_SWIN_DEFAULTS, ships_code=False),
    "resnet18_cifar": BuiltInFamily(ResNetCifarConfig, ResNetCifarForImageClassification),
}
# Scratch models normalise with these unless the recipe says otherwise (data.mean / data.std).
BUILT_IN_MEAN = (0.5, 0.5, 0.5)
BUILT_IN_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class ExplainLayer:
    """The layer Grad-CAM reads and how its output is laid out: ``tokens`` (B, N, C) with ``prefix_tokens`` in
    front (None: N minus the largest square), ``nchw`` (B, C, h, w) or ``nhwc`` (B, h, w, C)."""

    module: nn.Module
    layout: str
    prefix_tokens: Optional[int] = None


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    explain_layer: Callable[[nn.Module], ExplainLayer]
    prefix_tokens: Callable[[nn.Module], Optional[int]] = lambda model: None


def _last_stage(model: nn.Module) -> nn.Module:
    return find_stages(model)[1][-1]


def _first_norm(module: nn.Module) -> nn.Module:
    return next(m for m in module.modules() if isinstance(m, NORM_TYPES))


def _timm_layer(model: nn.Module) -> ExplainLayer:
    timm_model = model.timm_model
    if hasattr(timm_model, "blocks"):  # timm ViT family
        return ExplainLayer(timm_model.blocks[-1].norm1, "tokens", getattr(timm_model, "num_prefix_tokens", 1))
    if hasattr(timm_model, "layers"):  # timm Swin: stages emit NHWC
        return ExplainLayer(timm_model.layers[-1], "nhwc")
    return ExplainLayer(_last_stage(model), "nchw")


# Grad-CAM layers: ViT-like models read the last block's pre-attention norm (the final norm's patch tokens get
# no gradient under CLS pooling; see hfvision.explain.gradcam); Swin the last stage's tokens; conv nets the
# last stage's map.
FAMILIES = (
    Family("scratch_vit", ("scratch_vit",),
           lambda m: ExplainLayer(m.vit.blocks[-1].norm1, "tokens", m.config.num_prefix_tokens),
           lambda m: m.config.num_prefix_tokens),
    Family("vit", ("vit", "deit", "dinov2", "dinov2_with_registers", "beit", "vit_msn", "vit_mae"),
           lambda m: ExplainLayer(_first_norm(_last_stage(m)), "tokens")),
    Family("swin", ("swin", "swinv2", "donut-swin"), lambda m: ExplainLayer(_last_stage(m), "tokens", 0),
           lambda m: 0),
    Family("timm", ("timm_wrapper",), _timm_layer,
           lambda m: getattr(m.timm_model, "num_prefix_tokens", None)),
)
CONVOLUTIONAL = Family("convolutional", (), lambda m: ExplainLayer(_last_stage(m), "nchw"), lambda m: 0)


def family_of(model: nn.Module) -> Family:
    """The model's family from ``config.model_type``; anything unlisted is treated as convolutional."""
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    return next((f for f in FAMILIES if model_type in f.model_types), CONVOLUTIONAL)


def ships_code(model_type: str) -> bool:
    """Whether a saved dir of this model type loads only with ``trust_remote_code=True`` outside hfvision."""
    return any(f.ships_code and f.config_class.model_type == model_type for f in BUILT_IN.values())
