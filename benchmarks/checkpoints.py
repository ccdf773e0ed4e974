"""Randomly initialised transformers ViTs saved like Hub checkpoints, the stand-ins the comparisons load."""

from pathlib import Path

import torch
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

from benchmarks.results import CIFAR10_LABELS


def save_random_vit(path: Path, image_size: int, patch_size: int, mean, std, **shape) -> Path:
    """A ``ViTForImageClassification`` (10 CIFAR-10 labels, transformers' default ViT-B shape unless ``shape`` says
    otherwise) at a seeded random init, saved with its image processor to ``path``."""
    torch.manual_seed(0)
    config = ViTConfig(image_size=image_size, patch_size=patch_size, num_labels=10,
                       id2label=dict(enumerate(CIFAR10_LABELS)), label2id={n: i for i, n in enumerate(CIFAR10_LABELS)},
                       **shape)
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": image_size, "width": image_size}, image_mean=list(mean),
                      image_std=list(std)).save_pretrained(path)
    return path


def save_random_vit_b32(path: Path) -> Path:
    """The ViT-B/32 shape (width 768, depth 12, 12 heads, patch 32) at 224 px, mean and std 0.5."""
    return save_random_vit(path, 224, 32, (0.5,) * 3, (0.5,) * 3)
