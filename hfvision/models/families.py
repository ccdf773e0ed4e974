"""Per-family tuning knowledge, in one table keyed by family: LoRA target modules and the depth of every
parameter for layer-wise learning-rate decay. ``hfvision.models.lora`` and ``hfvision.training.optim`` read it;
neither keeps its own list.

Depth follows BEiT (Bao et al. 2022, arXiv:2106.08254, ``optim_factory.get_layer_id_for_vit``) as timm's
``param_groups_layer_decay`` does: the embeddings are layer 0, block ``i`` (counted over all stages for Swin)
is layer ``i + 1``, and the final norm and head are layer ``L + 1``. For timm models, timm's own
``group_matcher`` decides the groups (the final norm joins the last block there; the head is the top layer).

Module and parameter names are those of the plain transformers model (transformers 5.x: ``vit.layers.N`` with
``q_proj``/``v_proj``; 4.x's ``vit.encoder.layer.N`` is accepted for depth too).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass

from timm.models import group_parameters
from torch import nn


@dataclass(frozen=True)
class TuningFamily:
    name: str
    model_types: tuple[str, ...]
    lora_targets: tuple[str, ...]  # module-name suffixes LoRA adapts by default (peft's ``target_modules``)
    layer_depths: Callable[[nn.Module], dict[str, int]]  # parameter name -> depth; the largest is the head's


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


TUNING_FAMILIES = (
    TuningFamily("scratch_vit", ("scratch_vit",), ("qkv", "proj"), _scratch_vit_depths),
    TuningFamily("vit", ("vit",), ("q_proj", "v_proj"), _vit_depths),
    TuningFamily("swin", ("swin",), ("q_proj", "v_proj"), _swin_depths),
    TuningFamily("timm", ("timm_wrapper",), ("qkv",), _timm_depths),
)


def tuning_family(model: nn.Module) -> TuningFamily | None:
    """The family entry for ``model.config.model_type``, or None where hfvision has no table for it."""
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    return next((f for f in TUNING_FAMILIES if model_type in f.model_types), None)


def supported_model_types() -> str:
    return ", ".join(t for f in TUNING_FAMILIES for t in f.model_types)
