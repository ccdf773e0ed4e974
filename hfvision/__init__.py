"""hfvision: fine-tune, train from scratch, evaluate, explain and share vision transformers.

Importing the package registers the scratch families with the transformers Auto classes (and marks
them for ``auto_map`` so saved dirs carry their code); nothing else happens at import time.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from hfvision.models.resnet_cifar import ResNetCifarConfig, ResNetCifarForImageClassification, ResNetCifarModel
from hfvision.models.scratch_vit import ScratchViTConfig, ScratchViTForImageClassification, ScratchViTModel

__version__ = "0.1.0"

for _config, _base, _classifier in (
    (ScratchViTConfig, ScratchViTModel, ScratchViTForImageClassification),
    (ResNetCifarConfig, ResNetCifarModel, ResNetCifarForImageClassification),
):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _base, exist_ok=True)
    AutoModelForImageClassification.register(_config, _classifier, exist_ok=True)
    _config.register_for_auto_class()
    _base.register_for_auto_class("AutoModel")
    _classifier.register_for_auto_class("AutoModelForImageClassification")

__all__ = [
    "ResNetCifarConfig", "ResNetCifarForImageClassification", "ResNetCifarModel",
    "ScratchViTConfig", "ScratchViTForImageClassification", "ScratchViTModel",
]
