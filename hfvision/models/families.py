"""The family registry: what every stage needs to know about a kind of model, in one table.

- ``BUILT_IN``: the families hfvision builds from a config (``model.name: scratch_vit`` ...): config and model
  classes, architecture defaults, and whether saved dirs carry their code (``auto_map``).
- ``FAMILIES``: every family a checkpoint can belong to, found from ``config.model_type``: the layer Grad-CAM
  reads and its layout, the prefix tokens (CLS, registers) in front of the patch tokens, the modules LoRA adapts
  by default, and the depth of every parameter for layer-wise learning-rate decay. The factory, tuning, LoRA,
  the optimiser, Grad-CAM, rollout and the model card read these tables; none keeps its own list.

Depth follows BEiT (Bao et al. 2022, arXiv:2106.08254, ``optim_factory.get_layer_id_for_vit``) as timm's
``param_groups_layer_decay`` does: the embeddings are layer 0, block ``i`` (counted over all stages for Swin)
is layer ``i + 1``, and the final norm and head are layer ``L + 1``. For timm models, timm's own
``group_matcher`` decides the groups (the final norm joins the last block there; the head is the top layer).
Module and parameter names are those of the plain transformers model (transformers 5.x: ``vit.layers.N`` with
``q_proj``/``v_proj``; 4.x's ``vit.encoder.layer.N`` is accepted for depth too). Layers are found by probing
where module paths differ across transformers versions.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Callable, Optional

from timm.models import group_parameters
from torch import nn
from transformers import SwinConfig, SwinForImageClassification

from hfvision.models.resnet_cifar import ResNetCifarConfig, ResNetCifarForImageClassification
from hfvision.models.scratch_vit import ScratchViTConfig, ScratchViTForImageClassification
from hfvision.models.module_tree import NORM_LAYERS, find_stages


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
    lora_targets: tuple[str, ...] = ()  # module-name suffixes LoRA adapts by default (peft's ``target_modules``)
    layer_depths: Optional[Callable[[nn.Module], dict[str, int]]] = None  # parameter -> depth; the head's largest


def _last_stage(model: nn.Module) -> nn.Module:
    return find_stages(model)[1][-1]


def _first_norm(module: nn.Module) -> nn.Module:
    return next(m for m in module.modules() if isinstance(m, NORM_LAYERS))


def _timm_layer(model: nn.Module) -> ExplainLayer:
    timm_model = model.timm_model
    if hasattr(timm_model, "blocks"):  # timm ViT family
        return ExplainLayer(timm_model.blocks[-1].norm1, "tokens", getattr(timm_model, "num_prefix_tokens", 1))
    if hasattr(timm_model, "layers"):  # timm Swin: stages emit NHWC
        return ExplainLayer(timm_model.layers[-1], "nhwc")
    return ExplainLayer(_last_stage(model), "nchw")


def _depths_by_pattern(model: nn.Module, embeddings: str, block: str, num_layers: int,
                       block_index: Callable[[re.Match], int] = lambda m: int(m[1])) -> dict[str, int]:
    """0 for names matching ``embeddings``, ``block_index + 1`` for names matching ``block``, else ``L + 1``."""
    depths = {}
    for name, _ in model.named_parameters():
        match = re.match(block, name)
        if re.match(embeddings, name):
            depths[name] = 0
        elif match:
            depths[name] = block_index(match) + 1
        else:
            depths[name] = num_layers + 1
    return depths


def _scratch_vit_depths(model: nn.Module) -> dict[str, int]:
    return _depths_by_pattern(model, r"vit\.(patch_embed|cls_token|registers|position_table)\b",
                              r"vit\.blocks\.(\d+)\.", model.config.num_hidden_layers)


def _vit_depths(model: nn.Module) -> dict[str, int]:
    return _depths_by_pattern(model, r"vit\.embeddings\.", r"vit\.(?:layers|encoder\.layer)\.(\d+)\.",
                              model.config.num_hidden_layers)


def _swin_depths(model: nn.Module) -> dict[str, int]:
    """Blocks are numbered across stages; a stage's patch merging (``downsample``, at its end in transformers)
    shares the depth of the stage's last block."""
    depths = list(model.config.depths)
    first_block = [0, *itertools.accumulate(depths)]

    def block_index(match: re.Match) -> int:
        stage = int(match[1])
        return first_block[stage] + (int(match[2]) if match[2] is not None else depths[stage] - 1)

    return _depths_by_pattern(model, r"swin\.embeddings\.", r"swin\.encoder\.layers\.(\d+)\.(?:blocks\.(\d+)\.|downsample\.)",
                              sum(depths), block_index)


def _timm_depths(model: nn.Module) -> dict[str, int]:
    timm_model = model.timm_model
    groups = group_parameters(timm_model, timm_model.group_matcher(coarse=False), reverse=True)
    return {f"timm_model.{name}": depth for name, depth in groups.items()}


# Grad-CAM layers: ViT-like models read the last block's pre-attention norm (the final norm's patch tokens get
# no gradient under CLS pooling; see hfvision.explain.gradcam); Swin the last stage's tokens; conv nets the
# last stage's map. LoRA targets and depth tables exist where the module names are known.
FAMILIES = (
    Family("scratch_vit", ("scratch_vit",),
           lambda m: ExplainLayer(m.vit.blocks[-1].norm1, "tokens", m.config.num_prefix_tokens),
           lambda m: m.config.num_prefix_tokens, ("qkv", "proj"), _scratch_vit_depths),
    Family("vit", ("vit",), lambda m: ExplainLayer(_first_norm(_last_stage(m)), "tokens"),
           lora_targets=("q_proj", "v_proj"), layer_depths=_vit_depths),
    Family("vit_like", ("deit", "dinov2", "dinov2_with_registers", "beit", "vit_msn", "vit_mae"),
           lambda m: ExplainLayer(_first_norm(_last_stage(m)), "tokens")),
    Family("swin", ("swin",), lambda m: ExplainLayer(_last_stage(m), "tokens", 0), lambda m: 0,
           ("q_proj", "v_proj"), _swin_depths),
    Family("swin_like", ("swinv2", "donut-swin"), lambda m: ExplainLayer(_last_stage(m), "tokens", 0), lambda m: 0),
    Family("timm", ("timm_wrapper",), _timm_layer, lambda m: getattr(m.timm_model, "num_prefix_tokens", None),
           ("qkv",), _timm_depths),
)
CONVOLUTIONAL = Family("convolutional", (), lambda m: ExplainLayer(_last_stage(m), "nchw"), lambda m: 0)


def family_of(model: nn.Module) -> Family:
    """The model's family from ``config.model_type``; anything unlisted is treated as convolutional."""
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    return next((f for f in FAMILIES if model_type in f.model_types), CONVOLUTIONAL)


def tuning_family(model: nn.Module) -> Family | None:
    """The model's family where it has LoRA targets and a depth table, else None."""
    family = family_of(model)
    return family if family.layer_depths is not None else None


def supported_model_types() -> str:
    """The model types with LoRA defaults and layer-decay tables, for error messages."""
    return ", ".join(t for f in FAMILIES if f.layer_depths is not None for t in f.model_types)


def ships_code(model_type: str) -> bool:
    """Whether a saved dir of this model type loads only with ``trust_remote_code=True`` outside hfvision."""
    return any(f.ships_code and f.config_class.model_type == model_type for f in BUILT_IN.values())
