"""Cached frozen-backbone features for head-only tuning.

When only the classifier trains, the frozen part of the model gives the same output for an image in every
epoch. So it runs once per split, in eval mode and the run's precision, and the head trains and validates on
what it produced: the classifier's input (pooled features after the final norm), captured by a forward
pre-hook on the head that ``find_classifier`` finds, as ``hfvision.explain.pca`` does. The cut is generic:
whatever the family computes before its classifier is "the frozen part".

With random train-time augmentation the features of an image change every epoch, so the cache is not exact;
``data.cached_views: K`` then caches K augmented views of each training image and epoch ``e`` reads view
``e mod K`` (validation features stay exact). MixUp/CutMix mix pixels within a batch and are not cacheable.

The cache key (``features_fingerprint``) hashes everything the features depend on: the frozen part's weights,
buffers and config; the split's decoded uint8 pixels themselves, which pin the data source, split, sample
limits, seed and decode size (and notice a dataset that changed on disk under the same name); the
``InputSpec`` the batches are resized and normalised to (input size, mean, std); for augmented views the augmentation, K and the seed; the precision;
and ``FORMAT_VERSION``. Entries live in ``$HFVISION_CACHE`` (else ``~/.cache/hfvision/features``), one
directory per key (``features.safetensors`` + ``meta.json``), written atomically; runs and sweeps reuse them.
``meta.json`` holds the features' shape, dtype and SHA-256: an entry that no longer matches them (truncated,
overwritten, reshaped) is reported in one line and rebuilt, never served.

Under several processes each rank computes a contiguous share of the fixed-size chunks (so the views do not
depend on the process count), the shares are gathered to every rank and the main process writes the entry; a hit is decided on the main process and
broadcast, so all ranks take the same path.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers.modeling_outputs import ImageClassifierOutput

from hfvision.accelerator import main_process_says
from hfvision.data.sources import ImageData
from hfvision.data import store as image_store
from hfvision.data.store import StoredPixels
from hfvision.data.transforms import BatchPreprocessor
from hfvision.errors import HfvisionError
from hfvision.fileio import atomic_directory, write_json_atomic
from hfvision.models.module_tree import find_classifier
from hfvision.recipe import Recipe, decide_feature_cache

FORMAT_VERSION = 2  # 2: entries carry a checksum; the decode/resize code changed since 1
DEFAULT_CACHE_DIR = "~/.cache/hfvision/features"
FEATURES_FILE = "features.safetensors"
# Config fields that describe the head or the file, not what the frozen part computes.
HEAD_CONFIG_KEYS = {"id2label", "label2id", "num_labels", "problem_type", "transformers_version", "dtype",
                    "torch_dtype", "architectures"}


# ----------------------------------------------------------------------------------------------
# When the cache is used


@dataclass
class FeatureCachePlan:
    """Whether a run trains on cached features, with how many augmented views (None: exact features), and
    once they are there, how long getting them took (computing, or reading a cache hit)."""

    enabled: bool
    views: int | None
    reason: str
    seconds: float | None = None

    def describe(self) -> str:
        return f"feature cache: {'on' if self.enabled else 'off'} ({self.reason})"

    def record(self) -> dict:
        return asdict(self)


def plan_feature_cache(recipe: Recipe) -> FeatureCachePlan:
    """The run's plan from ``train.feature_cache`` and ``data.cached_views``, as the recipe's rules decide it
    (``hfvision.recipe.decide_feature_cache``, which also refuses a recipe that asks for a cache it cannot have)."""
    decision = decide_feature_cache(recipe)
    return FeatureCachePlan(decision.enabled, decision.views, decision.reason)


# ----------------------------------------------------------------------------------------------
# The cut between the frozen part and the head


def classifier_inputs(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """What the model's classifier receives for ``pixel_values``: the frozen part's output."""
    captured = []
    handle = find_classifier(model).register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    try:
        model(pixel_values=pixel_values)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise HfvisionError(f"train.feature_cache: {type(model).__name__} calls its classifier {len(captured)} "
                            f"times per forward; set train.feature_cache: off")
    return captured[0]


class HeadOnFeatures(nn.Module):
    """The model's classifier as the module that trains, fed cached features in place of pixels.

    Only the classifier is a submodule, so ``parameters()``, ``state_dict()``, the optimiser, DDP and EMA see
    the head alone; the classifier is shared with the whole model, so ``save_pretrained`` writes the whole
    model (backbone + trained head), which loads with plain transformers.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.classifier = find_classifier(model)
        object.__setattr__(self, "model", model)  # not registered: a plain reference to the whole model

    def forward(self, features: torch.Tensor) -> ImageClassifierOutput:
        return ImageClassifierOutput(logits=self.classifier(features))

    def save_pretrained(self, path, **kwargs) -> None:
        self.model.save_pretrained(path, **kwargs)


def head_logits(head: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The forward of a run on cached features (``HeadOnFeatures``, prepared): the head's logits."""
    return head(features).logits


class FeatureBatches:
    """The per-batch step of loaders that yield features (the cache's): none, they were preprocessed before the
    frozen part. ``BatchPreprocessor`` is the step of loaders that yield uint8 pixels."""

    def __call__(self, features: torch.Tensor, labels: torch.Tensor, train: bool, generator=None):
        return features, labels


# ----------------------------------------------------------------------------------------------
# Fingerprint


def _hash_tensor(digest, tensor: torch.Tensor) -> None:
    digest.update(f"{tuple(tensor.shape)}:{tensor.dtype};".encode())
    digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def frozen_part_digest(model: nn.Module) -> str:
    """Hash of what the frozen part computes: its class and config (labels aside), weights and buffers."""
    classifier = find_classifier(model)
    head = {id(t) for t in itertools.chain(classifier.parameters(), classifier.buffers())}
    config = getattr(model, "config", None)
    config = {k: v for k, v in (config.to_dict() if config is not None else {}).items()
              if k not in HEAD_CONFIG_KEYS and not k.startswith("_")}
    digest = hashlib.sha256(json.dumps([type(model).__name__, config], sort_keys=True, default=str).encode())
    for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
        if id(tensor) not in head:
            digest.update(name.encode())
            _hash_tensor(digest, tensor)
    return digest.hexdigest()


def pixels_digest(pixels: torch.Tensor | StoredPixels) -> str:
    """Hash of a split's decoded uint8 images (N, 3, H, W), in order: a store's is its pixel file's checksum (its
    manifest has it), so a cache lookup reads no pixels."""
    digest = hashlib.sha256()
    if isinstance(pixels, StoredPixels):
        digest.update(f"store:{tuple(pixels.shape)}:{pixels.content_sha256}".encode())
    else:
        _hash_tensor(digest, pixels)
    return digest.hexdigest()


def features_fingerprint(*, frozen_part: str, pixels: str, preprocessor: BatchPreprocessor, precision: str,
                         views: int | None, seed: int) -> str:
    """The cache key: digests of the frozen part and the pixels, plus every setting the features depend on."""
    augment = preprocessor.augment
    resized_crop = {"random_resized_crop": [augment.random_resized_crop_scale, augment.random_resized_crop_ratio]}
    key = {
        "format": FORMAT_VERSION,
        "preprocessing": image_store.PREPROCESSING_VERSION,
        "frozen_part": frozen_part,
        "pixels": pixels,
        "input": asdict(preprocessor.spec),  # the model's input size, mean and std
        "precision": precision,
        "views": None if views is None else {
            "count": views, "seed": seed, "random_crop_padding": augment.random_crop_padding,
            "horizontal_flip": augment.horizontal_flip, "auto_augment": augment.auto_augment,
            **(resized_crop if augment.random_resized_crop else {})},  # keys of caches made before it unchanged
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


# ----------------------------------------------------------------------------------------------
# Computing


def _view_generator(seed: int, view: int, start: int) -> torch.Generator:
    """The augmentation RNG of one chunk of one view: independent of batch order and process count."""
    value = int.from_bytes(hashlib.sha256(f"{seed}/{view}/{start}".encode()).digest()[:8], "little") >> 1
    return torch.Generator().manual_seed(value)


@torch.no_grad()
def compute_features(model: nn.Module, pixels: torch.Tensor, preprocessor: BatchPreprocessor,
                     accelerator: Accelerator, *, batch_size: int, views: int | None = None,
                     seed: int = 0) -> torch.Tensor:
    """Classifier inputs (K, N, ...) for ``pixels`` (N, 3, H, W): K = 1 exact view, else K augmented views."""
    model.eval()
    starts = list(range(0, len(pixels), batch_size))
    local = []
    with accelerator.split_between_processes(starts) as my_starts:
        for start in tqdm(my_starts, desc="caching features", leave=False,
                          disable=not (accelerator.is_local_main_process and sys.stderr.isatty())):
            images = pixels[start:start + batch_size].to(accelerator.device)
            no_labels = torch.zeros(len(images), dtype=torch.long, device=images.device)
            per_view = []
            for view in range(views or 1):
                if views is None:
                    x, _ = preprocessor(images, no_labels, train=False)
                else:
                    x, _ = preprocessor(images, no_labels, train=True, generator=_view_generator(seed, view, start))
                with accelerator.autocast():
                    per_view.append(classifier_inputs(model, x))
            local.append(torch.stack(per_view, dim=1).cpu())  # (B, K, ...)
    share = torch.cat(local) if local else None  # a rank gets no chunk when a split has fewer than the ranks
    shares = gather_object([share]) if accelerator.num_processes > 1 else [share]  # in rank order
    return torch.cat([s for s in shares if s is not None]).transpose(0, 1).contiguous()  # (K, N, ...)


# ----------------------------------------------------------------------------------------------
# The on-disk store


def cache_root() -> Path:
    return Path(os.environ.get("HFVISION_CACHE") or DEFAULT_CACHE_DIR).expanduser()


def load_or_compute_features(model: nn.Module, pixels: torch.Tensor, preprocessor: BatchPreprocessor,
                             accelerator: Accelerator, *, batch_size: int, views: int | None = None, seed: int = 0,
                             label: str = "") -> torch.Tensor:
    """Features (K, N, ...) of ``pixels``, on the CPU, from the cache, or computed and stored there on a miss."""
    fingerprint = features_fingerprint(frozen_part=frozen_part_digest(model), pixels=pixels_digest(pixels),
                                       preprocessor=preprocessor, precision=accelerator.mixed_precision,
                                       views=views, seed=seed)
    entry = cache_root() / fingerprint
    expected_shape = (views or 1, len(pixels))
    if main_process_says(accelerator, (entry / FEATURES_FILE).is_file()):
        features, problem = _read_entry(entry, expected_shape)
        if main_process_says(accelerator, problem) is None:
            accelerator.print(f"feature cache: {label} features {tuple(features.shape)} read from {entry}")
            return features
        accelerator.print(f"feature cache: the {label} entry {entry} is damaged ({problem}); rebuilding it")
    start = time.perf_counter()
    features = compute_features(model, pixels, preprocessor, accelerator, batch_size=batch_size, views=views,
                                seed=seed)
    if accelerator.is_main_process:
        with atomic_directory(entry) as tmp:
            save_file({"features": features.cpu()}, tmp / FEATURES_FILE)
            write_json_atomic(tmp / "meta.json", {"split": label, "shape": list(features.shape),
                                                  "dtype": str(features.dtype), "sha256": _tensor_sha256(features),
                                                  "views": views, "precision": accelerator.mixed_precision,
                                                  "format": FORMAT_VERSION, "preprocessing": image_store.PREPROCESSING_VERSION,
        "preprocessing": image_store.PREPROCESSING_VERSION, "created": time.strftime("%Y-%m-%d %H:%M:%S")})
    accelerator.wait_for_everyone()
    accelerator.print(f"feature cache: {label} features {tuple(features.shape)} computed in "
                      f"{time.perf_counter() - start:.1f}s, stored in {entry}")
    return features


def _tensor_sha256(tensor: torch.Tensor) -> str:
    digest = hashlib.sha256()
    _hash_tensor(digest, tensor)
    return digest.hexdigest()


def _read_entry(entry: Path, expected_shape: tuple[int, int]) -> tuple[torch.Tensor | None, str | None]:
    """(features, None) for an entry that is whole, or (None, what is wrong with it)."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        features = load_file(entry / FEATURES_FILE)["features"]
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        return None, f"unreadable: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    if not isinstance(meta, dict) or "sha256" not in meta:
        return None, "meta.json has no checksum"
    if meta.get("preprocessing") != image_store.PREPROCESSING_VERSION:
        return None, (f"made from pixels of another hfvision (preprocessing version {meta.get('preprocessing')}, "
                      f"this one {image_store.PREPROCESSING_VERSION})")
    if tuple(features.shape[:2]) != expected_shape or list(features.shape) != meta.get("shape"):
        return None, f"shape {tuple(features.shape)}, expected {meta.get('shape')} for {expected_shape[1]} images"
    if str(features.dtype) != meta.get("dtype") or _tensor_sha256(features) != meta["sha256"]:
        return None, "its contents do not match their checksum"
    return features, None


# ----------------------------------------------------------------------------------------------
# Training data


class CachedFeatures(Dataset):
    """(features, label) pairs of one split; with K views, ``set_epoch(e)`` selects view ``e mod K``."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        self.features, self.labels, self.view = features, labels, 0  # features: (K, N, ...)

    def set_epoch(self, epoch: int) -> None:
        self.view = epoch % len(self.features)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.features[self.view, index], self.labels[index]

    def loader(self, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(self, batch_size=batch_size, shuffle=shuffle)


def cached_head_data(model: nn.Module, data: ImageData, preprocessor: BatchPreprocessor, accelerator: Accelerator,
                     plan: FeatureCachePlan, *, batch_size: int, seed: int):
    """What a head-only run trains on when ``plan.enabled``: (the head to train, train features, val features).
    The train split gets ``plan.views`` augmented views (None: exact); validation is always exact."""
    start = time.perf_counter()
    model.to(accelerator.device)
    train = load_or_compute_features(model, data.train.pixels, preprocessor, accelerator, batch_size=batch_size,
                                     views=plan.views, seed=seed, label="train")
    validation = load_or_compute_features(model, data.validation.pixels, preprocessor, accelerator,
                                          batch_size=batch_size, label="validation")
    plan.seconds = time.perf_counter() - start
    return (HeadOnFeatures(model), CachedFeatures(train, data.train.labels),
            CachedFeatures(validation, data.validation.labels))
