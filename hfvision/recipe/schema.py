"""The recipe's schema: one dataclass per section, each field with its type, default and (in the docstring under
it) what it does. This is the one place a key is documented; ``docs/recipe.md`` is generated from it
(``hfvision.recipe.reference``). Parsing is ``parser.py``, the rules on values ``rules.py``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

TUNING_STRATEGIES = ("full", "head_only", "head_and_last_stage", "lora")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("cosine", "step", "constant")
MIXED_PRECISION = ("no", "fp16", "bf16")
AUTO_AUGMENT = ("randaugment", "trivialaugment")
TRACKERS = ("tensorboard", "none")
BAD_IMAGE_POLICIES = ("error", "skip")
RESIZE_POLICIES = ("checkpoint", "squash", "center_crop")
FEATURE_CACHE_MODES = ("auto", "on", "off")
# dotted key -> the values it may take (``rules.py`` enforces them, the reference lists them)
CHOICES = {"model.tuning": TUNING_STRATEGIES, "data.on_bad_image": BAD_IMAGE_POLICIES, "data.resize": RESIZE_POLICIES,
           "data.augment.auto_augment": AUTO_AUGMENT, "train.optimizer": OPTIMIZERS, "train.scheduler": SCHEDULERS,
           "train.mixed_precision": MIXED_PRECISION, "train.report_to": TRACKERS,
           "train.feature_cache": FEATURE_CACHE_MODES}


@dataclass
class LoraRecipe:
    """LoRA adapters (``model.tuning: lora``); defaults as in peft's image-classification guide."""

    r: int = 16
    """Rank of the low-rank update."""
    alpha: float = 16.0
    """The update is scaled by alpha / r."""
    dropout: float = 0.1
    """Dropout on the adapter's input."""
    target_modules: Optional[list] = None
    """Module-name suffixes that get adapters; null: the family's (``hfvision/models/families.py``)."""


@dataclass
class ModelRecipe:
    """What is built and what of it trains."""

    name: str = "scratch_vit"
    """A Hub id, a local checkpoint dir, a run dir (its ``best/``), or a built-in family: scratch_vit,
    scratch_swin, resnet18_cifar."""
    tuning: str = "full"
    """What trains when adapting a pretrained model: everything, the classifier only, the classifier and the last
    stage, or LoRA adapters plus the classifier."""
    config: dict = field(default_factory=dict)
    """Architecture fields of scratch families (HF names: hidden_size, num_hidden_layers, ...); for pretrained
    checkpoints, config attributes to override."""
    lora: LoraRecipe = field(default_factory=LoraRecipe)
    """LoRA settings, used only with ``model.tuning: lora``."""


@dataclass
class AugmentRecipe:
    """Train-time augmentation, applied per batch."""

    random_crop_padding: int = 4
    """Pad by this many pixels, then crop back at a random offset (the CIFAR-style crop); 0 turns the crop off.
    An alternative to ``random_resized_crop``: a recipe sets one or the other, not both."""
    random_resized_crop: bool = False
    """The photo crop of timm and the transformers examples: per training image a box of an area fraction uniform
    in ``random_resized_crop_scale`` and an aspect ratio log-uniform in ``random_resized_crop_ratio`` (torchvision's
    ``RandomResizedCrop`` sampling, its central fallback crop after 10 tries), resized back to the stored size
    (bilinear, antialiased) before the batch is resized to the model's. Needs ``random_crop_padding: 0``: the two
    crops are alternatives, not a chain."""
    random_resized_crop_scale: list = field(default_factory=lambda: [0.08, 1.0])
    """The crop's area as a fraction of the image's, [lo, hi] with 0 < lo <= hi <= 1 (``random_resized_crop``
    only)."""
    random_resized_crop_ratio: list = field(default_factory=lambda: [3 / 4, 4 / 3])
    """The crop's aspect ratio (width / height), [lo, hi] with 0 < lo <= hi, drawn log-uniformly
    (``random_resized_crop`` only)."""
    horizontal_flip: bool = True
    """Flip half the images left to right."""
    auto_augment: Optional[str] = None
    """A random augmentation policy; null: none."""
    mixup_alpha: float = 0.0
    """MixUp of images and labels within a batch (torchvision's, this alpha); 0 turns mixup off."""
    cutmix_alpha: float = 0.0
    """CutMix within a batch (torchvision's, this alpha); 0 turns cutmix off."""


@dataclass
class DataRecipe:
    """Where the images come from, how they are split and what the model sees."""

    dataset: str = "synthetic"
    """``synthetic`` (generated, offline), a Hub id (uoft-cs/cifar10), or a local dir ``load_dataset`` reads
    (Parquet/Arrow, an image folder)."""
    image_column: Optional[str] = None
    """The image column; null: found from the features (``Image``)."""
    label_column: Optional[str] = None
    """The label column; null: found from the features (``ClassLabel``)."""
    val_fraction: float = 0.1
    """Share of the train split held out for validation (seeded, stratified), and again for a test split when
    the source has none; a given test split stays untouched."""
    max_train_samples: Optional[int] = None
    """Use at most this many training images (a seeded sample); null: all."""
    max_eval_samples: Optional[int] = None
    """Use at most this many validation and test images each; null: all."""
    image_size: Optional[int] = None
    """Input size in pixels; null: the image processor's (pretrained) or ``model.config``'s (scratch)."""
    resize: str = "checkpoint"
    """How an image becomes a square input, at decode time: ``checkpoint``, as the pretrained checkpoint's image
    processor does (timm's centre crop of ``crop_pct``, transformers' ``do_center_crop``, else a squash; scratch
    models squash); ``squash``, the whole image resized to the square; ``center_crop``, the shorter side resized to
    ``image_size / data.crop_pct`` and the central square kept."""
    crop_pct: Optional[float] = None
    """With ``data.resize: center_crop``, the share of the shorter side kept, in (0, 1]; null: the checkpoint's,
    else 0.875 (timm's default)."""
    mean: Optional[list] = None
    """Per-channel normalisation mean (three numbers); null: the image processor's."""
    std: Optional[list] = None
    """Per-channel normalisation std (three positive numbers); null: the image processor's."""
    on_bad_image: str = "error"
    """An unreadable image: ``error`` stops naming it, ``skip`` drops it and lists it in metrics.json."""
    streaming: bool = False
    """Stream the training split (``load_dataset(..., streaming=True)``) instead of decoding it into a store: for
    data beyond the disk. Shuffled with a seeded buffer, split across processes and DataLoader workers, decoded on
    the fly; validation and test (the source's splits, or a held-out share of the stream) still go into stores."""
    decode_workers: Optional[int] = None
    """Processes that decode the images into the decoded-image store when it is built (later runs reuse the store
    and decode nothing); null: one per core this process may use."""
    classes: Optional[list] = None
    """Train on these classes only (names or ids), relabelled 0..n-1 in the order given; null: all."""
    augment: AugmentRecipe = field(default_factory=AugmentRecipe)
    """Train-time augmentation."""
    cached_views: Optional[int] = None
    """With the feature cache and a random train-time augmentation: cache this many augmented views of each
    training image, epoch e reading view e mod K; null: no views (the cache is then used only when exact)."""


@dataclass
class TrainRecipe:
    """The training loop."""

    epochs: int = 3
    """Passes over the training split (the upper bound under ``train.time_budget_minutes``)."""
    batch_size: int = 64
    """Images per process per forward pass."""
    learning_rate: float = 1e-3
    """Peak learning rate, after warmup."""
    weight_decay: float = 0.05
    """Weight decay of parameters with two or more dimensions (biases, norms and the model's
    ``no_weight_decay()`` get none)."""
    optimizer: str = "adamw"
    """The optimiser."""
    momentum: float = 0.9
    """SGD's momentum (``train.optimizer: sgd`` only)."""
    scheduler: str = "cosine"
    """The learning-rate schedule after linear warmup."""
    warmup_epochs: float = 0.0
    """Linear warmup from 0 over this many epochs (fractions allowed)."""
    step_size_epochs: int = 10
    """The step schedule's period in epochs (``train.scheduler: step`` only)."""
    step_gamma: float = 0.1
    """The step schedule's factor per period (``train.scheduler: step`` only)."""
    gradient_accumulation_steps: int = 1
    """Batches whose gradients are summed before each optimiser step."""
    max_grad_norm: Optional[float] = 1.0
    """Clip the gradient's global norm to this; null turns clipping off."""
    mixed_precision: str = "no"
    """Autocast precision of the forward pass in training and the test evaluation (fp16 needs a CUDA GPU); latency,
    FLOPs and heat maps use the saved float32 model."""
    channels_last: bool = False
    """Convolutional models (the ResNets): weights and input batches in channels-last memory format, which the CPU
    (oneDNN) and GPU convolution kernels run faster; the same numbers up to float rounding."""
    label_smoothing: float = 0.0
    """Label smoothing of the cross-entropy loss."""
    ema_decay: Optional[float] = None
    """Keep an exponential moving average of the weights with this decay (e.g. 0.999); it is what is validated
    and saved. null turns EMA off."""
    early_stopping_patience: Optional[int] = None
    """Stop after this many epochs without a better validation accuracy; null: never."""
    resume: bool = False
    """Continue the run in ``output_dir`` from its ``checkpoint/``, exactly where it stopped."""
    checkpoint_every_steps: Optional[int] = None
    """Also checkpoint every this many optimiser steps inside an epoch (exact resume after a kill)."""
    checkpoint_every_minutes: Optional[float] = None
    """Also checkpoint every this many minutes inside an epoch."""
    time_budget_minutes: Optional[float] = None
    """Train for this many minutes of wall-clock (validation included): the LR schedule is sized to the steps that
    fit, training stops when it is spent, then ``best/`` is evaluated; ``train.epochs`` is the upper bound."""
    report_to: str = "tensorboard"
    """Tracker of the per-epoch metrics (in ``output_dir/logs``)."""
    layer_decay: Optional[float] = None
    """Layer-wise LR decay: layer i of L gets lr * layer_decay ** (L + 1 - i); null: off."""
    allow_unusual_lr: bool = False
    """Silence the one-line warning about a learning rate that rarely suits the tuning mode."""
    feature_cache: str = "auto"
    """Head-only runs: train the classifier on the frozen part's output, computed once per split and cached on disk
    (``$HFVISION_CACHE``, else ``~/.cache/hfvision/features``). auto: when that is exact (no random train-time
    augmentation) or ``data.cached_views`` is set."""


@dataclass
class EvalRecipe:
    """Evaluation and the report."""

    batch_size: int = 256
    """Images per batch in validation and test evaluation."""
    latency_batch_size: int = 64
    """Batch size of the inference-latency measurement in metrics.json."""
    explain: bool = False
    """Write a per-class Grad-CAM grid (``gradcam_per_class.png``) into the run dir."""


@dataclass
class HubRecipe:
    """Sharing ``best/`` on the Hugging Face Hub."""

    push: bool = False
    """Push ``best/`` (with its model card) when the run ends."""
    repo_id: Optional[str] = None
    """The Hub repository, e.g. your-name/vit-cifar10; required with ``hub.push``."""
    private: bool = False
    """Create the repository as private."""


@dataclass
class SweepRecipe:
    """Runs that ``scripts/sweep.py`` expands this recipe into (``scripts/finetune.py`` ignores it)."""

    grid: dict = field(default_factory=dict)
    """Dotted key -> list of values; the cross product is run."""
    variants: dict = field(default_factory=dict)
    """Run name -> {dotted key: value}; each is crossed with the grid."""
    name_template: Optional[str] = None
    """Run names, e.g. "p{patch_size}_d{num_hidden_layers}" (the last part of each swept key); null: key=value of
    each grid key, joined by -."""


@dataclass
class Recipe:
    """A whole run."""

    seed: int = 42
    """Seed of the split, the sampler order and every batch's randomness."""
    output_dir: str = "runs/default"
    """The run directory."""
    model: ModelRecipe = field(default_factory=ModelRecipe)
    """What is built."""
    data: DataRecipe = field(default_factory=DataRecipe)
    """What it sees."""
    train: TrainRecipe = field(default_factory=TrainRecipe)
    """How it trains."""
    eval: EvalRecipe = field(default_factory=EvalRecipe)
    """How it is evaluated."""
    hub: HubRecipe = field(default_factory=HubRecipe)
    """Where it is shared."""
    sweep: SweepRecipe = field(default_factory=SweepRecipe)
    """Runs a sweep expands this recipe into."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
