"""CIFAR-style ResNet-18 (He et al. 2016, arXiv:1512.03385, the CIFAR variant of kuangliu/pytorch-cifar):
a 3x3 stride-1 stem and no max-pool, so a 32x32 image keeps a 4x4 grid in the last stage; 11.17M
parameters for 10 classes.

Written as a registered ``PreTrainedModel`` rather than through transformers' timm wrapper: the timm
wrapper can only describe timm's ImageNet stem (7x7 stride 2 + max-pool), which leaves a 1x1 grid on
CIFAR, and this file, shipped beside the weights (``auto_map``), needs only torch and transformers.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention, ImageClassifierOutputWithNoAttention


class ResNetCifarConfig(PretrainedConfig):
    model_type = "resnet_cifar"

    def __init__(self, num_channels: int = 3, stage_widths: tuple = (64, 128, 256, 512),
                 blocks_per_stage: tuple = (2, 2, 2, 2), image_size: int = 32, **kwargs):
        self.num_channels = num_channels
        self.stage_widths = list(stage_widths)
        self.blocks_per_stage = list(blocks_per_stage)
        self.image_size = image_size
        super().__init__(**kwargs)
        if len(self.stage_widths) != len(self.blocks_per_stage) or not self.stage_widths:
            raise ValueError("ResNetCifarConfig: stage_widths and blocks_per_stage need the same, non-zero length")
        if any(not isinstance(v, int) or v < 1 for v in self.stage_widths + self.blocks_per_stage):
            raise ValueError("ResNetCifarConfig: stage_widths and blocks_per_stage hold positive integers")


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifarPreTrainedModel(PreTrainedModel):
    config_class = ResNetCifarConfig
    base_model_prefix = "resnet"
    main_input_name = "pixel_values"

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            bound = 1 / module.in_features ** 0.5
            nn.init.uniform_(module.weight, -bound, bound)
            nn.init.uniform_(module.bias, -bound, bound)


class ResNetCifarModel(ResNetCifarPreTrainedModel):
    def __init__(self, config: ResNetCifarConfig):
        super().__init__(config)
        width = config.stage_widths[0]
        self.stem = nn.Sequential(nn.Conv2d(config.num_channels, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        stages = []
        in_channels = width
        for index, (out_channels, blocks) in enumerate(zip(config.stage_widths, config.blocks_per_stage)):
            stride = 1 if index == 0 else 2
            layers = [BasicBlock(in_channels, out_channels, stride)]
            layers += [BasicBlock(out_channels, out_channels, 1) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            in_channels = out_channels
        self.stages = nn.ModuleList(stages)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False, **kwargs):
        x = self.stem(pixel_values)
        hidden_states = [x]
        for stage in self.stages:
            x = stage(x)
            hidden_states.append(x)
        return BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=x, pooler_output=x.mean(dim=(2, 3)),
            hidden_states=tuple(hidden_states) if output_hidden_states else None)


class ResNetCifarForImageClassification(ResNetCifarPreTrainedModel):
    def __init__(self, config: ResNetCifarConfig):
        super().__init__(config)
        self.resnet = ResNetCifarModel(config)
        self.classifier = nn.Linear(config.stage_widths[-1], config.num_labels)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None,
                output_hidden_states: bool = False, **kwargs):
        outputs = self.resnet(pixel_values, output_hidden_states=output_hidden_states)
        logits = self.classifier(outputs.pooler_output)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return ImageClassifierOutputWithNoAttention(loss=loss, logits=logits, hidden_states=outputs.hidden_states)
