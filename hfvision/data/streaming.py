"""The training split streamed (``data.streaming: true``): for data beyond the disk, read once per epoch, never stored.

The source (a Hub dataset, or a local folder of Parquet shards or images) is opened with ``load_dataset(...,
streaming=True)``. Its training stream is shuffled with a seeded buffer (``datasets``' ``shuffle``; the order
of epoch e is a function of (seed, e)), split across processes by ``split_dataset_by_node`` (whole shards to
each process when the shard count divides evenly, so a process reads only its files) and across DataLoader
workers by ``datasets`` itself, and decoded on the fly by the same ``decode_fitted`` as the store. Every process
steps while all of them still have a batch (one small all-reduce per step), so no process waits at a collective
for one that has run out. A step checkpoint records the batches done in the epoch; a resumed run reads its
stream again from the start of that epoch and drops them, so it continues exactly.

Validation and test are bounded: they come from the source's own splits (a held-out part of the train stream
when it has no validation split: the images whose content hash falls in one bucket of ``round(1 /
data.val_fraction)``, which training then never sees, whatever the shard or process), at most
``data.max_eval_samples`` each, and go into decoded-image stores as usual.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os

import torch
from accelerate import Accelerator
from datasets import ClassLabel, Dataset, Features, IterableDataset, load_dataset_builder
from datasets import Image as ImageFeature
from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader
from torch.utils.data import IterableDataset as TorchIterableDataset

from hfvision.data.images import UnreadableImage, decode_fitted, resize_rgb
from hfvision.errors import HfvisionError
from hfvision.recipe import DataRecipe

DEFAULT_EVAL_SAMPLES = 1000  # validation/test images taken from a stream when data.max_eval_samples is null
SHUFFLE_BUFFER = 1000


def _bucket(value: dict) -> int:
    """A stable number of an image from its content (bytes) or its path: the same on every process."""
    data = value.get("bytes") or (value.get("path") or "").encode()
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "little")


class DecodedStream(TorchIterableDataset):
    """(uint8 (3, side, side), label) pairs of a ``datasets`` stream, decoded as the store decodes; inside
    DataLoader workers ``datasets`` gives each worker its own shards. Unreadable images: per ``on_bad_image``."""

    def __init__(self, stream: IterableDataset, image_column: str, label_column: str, side: int,
                 crop_pct: float | None, on_bad_image: str, held_out: tuple[int, int, ...] | None = None):
        self.stream, self.image_column, self.label_column = stream, image_column, label_column
        self.side, self.crop_pct, self.on_bad_image = side, crop_pct, on_bad_image
        self.held_out = held_out  # (modulus, bucket, ...): images of these content-hash buckets are not trained on

    def set_epoch(self, epoch: int) -> None:
        self.stream.set_epoch(epoch)

    def __iter__(self):
        for example in self.stream:
            value = example[self.image_column]
            if self.held_out and _bucket(value) % self.held_out[0] in self.held_out[1:]:
                continue  # held out for validation or test
            try:
                array = decode_fitted(value, self.side, self.crop_pct, value.get("path"))
            except UnreadableImage as exc:
                if self.on_bad_image == "error":
                    raise HfvisionError(f"data: unreadable image {exc} (data.on_bad_image=skip drops such "
                                        f"images)") from None
                continue
            if array.shape[:2] != (self.side, self.side):
                array = resize_rgb(array, self.side)
            yield torch.from_numpy(array).permute(2, 0, 1).contiguous(), example[self.label_column]


class StreamLoader:
    """Batches of this process's part of the training stream, on the device, for at most ``steps`` batches and
    while every process still has one; ``skipping(n)`` resumes after the first ``n`` of the epoch."""

    def __init__(self, dataset: DecodedStream, batch_size: int, steps: int, accelerator: Accelerator, workers: int):
        self.dataset, self.batch_size, self.steps, self.accelerator = dataset, batch_size, steps, accelerator
        self.global_batches = steps * accelerator.num_processes  # the scheduler counts the unsharded loader
        self.loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                 persistent_workers=False)

    def __len__(self) -> int:
        return self.steps

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def _all_have_one(self, batch) -> bool:
        have = torch.tensor([0.0 if batch is None else 1.0], device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            have = self.accelerator.reduce(have, reduction="sum")
        return have.item() == self.accelerator.num_processes

    def skipping(self, batches: int):
        return itertools.islice(iter(self), batches, None)

    def __iter__(self):
        batches = iter(self.loader)
        for _ in range(self.steps):
            batch = next(batches, None)
            if not self._all_have_one(batch):
                return
            images, labels = batch
            yield images.to(self.accelerator.device), labels.to(self.accelerator.device)


class StreamedSplit:
    """The training split as a stream: ``loader`` gives a ``StreamLoader``; ``len`` is the images a pass reads
    (from the source's metadata), ``store`` None (nothing is stored) and ``skipped`` empty (not known ahead)."""

    def __init__(self, dataset: DecodedStream, count: int, accelerator: Accelerator, workers: int):
        self.dataset, self.count, self.accelerator, self.workers = dataset, count, accelerator, workers
        self.store, self.skipped = None, []

    def __len__(self) -> int:
        return self.count

    def loader(self, batch_size: int, shuffle: bool) -> StreamLoader:
        steps = max(1, math.ceil(self.count / self.accelerator.num_processes / batch_size))
        return StreamLoader(self.dataset, batch_size, steps, self.accelerator, self.workers)


def stream_length(dataset: str, split: str) -> int | None:
    """Examples in ``split`` from the source's metadata (the Hub's split info, or the Parquet files' footers)."""
    try:
        builder = load_dataset_builder(dataset)
    except Exception:  # the stream itself opened; a missing builder only means no metadata
        return None
    splits = builder.info.splits or {}
    if split in splits and splits[split].num_examples:
        return splits[split].num_examples
    files = (builder.config.data_files or {}).get(split) or []
    if files and all(str(f).endswith(".parquet") for f in files):
        import pyarrow.parquet as pq
        return sum(pq.read_metadata(str(f)).num_rows for f in files)
    return None


def materialise(stream: IterableDataset, count: int, features) -> Dataset:
    """The first ``count`` examples of a stream as a (small) map-style dataset, images left encoded."""
    rows = list(itertools.islice(iter(stream), count))
    return Dataset.from_list(rows, features=features)


def open_train_stream(data: DataRecipe, stream: IterableDataset, image_column: str, label_column: str,
                      seed: int, accelerator: Accelerator, side: int, crop_pct: float | None,
                      held_out: tuple[int, ...] | None) -> DecodedStream:
    """This process's part of the shuffled training stream, images left encoded until ``DecodedStream``."""
    stream = stream.cast_column(image_column, ImageFeature(decode=False)).select_columns([image_column, label_column])
    stream = stream.shuffle(seed=seed, buffer_size=SHUFFLE_BUFFER)
    if data.max_train_samples is not None:
        stream = stream.take(data.max_train_samples)
    stream = split_dataset_by_node(stream, rank=accelerator.process_index, world_size=accelerator.num_processes)
    return DecodedStream(stream, image_column, label_column, side, crop_pct, data.on_bad_image, held_out)


def check_label_feature(features, label_column: str) -> list[str]:
    feature = features[label_column]
    if not isinstance(feature, ClassLabel):
        raise HfvisionError(f"data.streaming: the label column '{label_column}' must be a ClassLabel (class names) "
                            f"to stream; it is {type(feature).__name__}")
    return list(feature.names)


def _given_or_held_out(raw, names: tuple[str, ...], bucket: int, holdout: int, image_column: str):
    """The source's own split of one of ``names``, else the train stream's images of hash ``bucket`` mod
    ``holdout``; and which it was, for the log."""
    name = next((n for n in names if n in raw), None)
    if name is not None:
        return raw[name].cast_column(image_column, ImageFeature(decode=False)), f"the source's {name} split"
    held = raw["train"].cast_column(image_column, ImageFeature(decode=False))
    held = held.filter(lambda value: _bucket(value) % holdout == bucket, input_columns=image_column)
    return held, f"the train stream's images whose content hash is {bucket} mod {holdout} (never trained on)"


def load_streaming_data(data: DataRecipe, seed: int, spec, accelerator: Accelerator, log=print):
    """``ImageData`` whose train split streams (see the module docstring); validation and test in stores."""
    from hfvision.data.sources import (TEST_SPLIT_NAMES, VAL_SPLIT_NAMES, ImageData, decode_split, find_columns,
                                       load_raw)

    raw = load_raw(data.dataset, streaming=True)
    if "train" not in raw:
        raise HfvisionError(f"data.dataset: '{data.dataset}' has no train split (has {', '.join(raw)})")
    features = raw["train"].features
    if features is None:
        raise HfvisionError(f"data.streaming: '{data.dataset}' does not declare its features; stream a dataset "
                            f"with Image and ClassLabel columns (Parquet written by datasets, or a Hub dataset)")
    image_column, label_column = find_columns(features, data.image_column, data.label_column)
    label_names = check_label_feature(features, label_column)
    holdout = max(2, round(1 / data.val_fraction))
    samples = data.max_eval_samples or DEFAULT_EVAL_SAMPLES
    splits, held_buckets = {}, []
    for name, names, bucket in (("validation", VAL_SPLIT_NAMES, 0), ("test", TEST_SPLIT_NAMES, 1)):
        stream, origin = _given_or_held_out(raw, names, bucket, holdout, image_column)
        if origin.startswith("the train stream"):
            held_buckets.append(bucket)
        log(f"data: streaming; {name}: the first {samples} images of {origin}")
        columns = Features({image_column: ImageFeature(decode=False), label_column: features[label_column]})
        rows = materialise(stream.select_columns([image_column, label_column]), samples, columns)
        splits[name] = decode_split(rows, image_column,
                                    label_column, spec.decode_size, data.on_bad_image, name, spec.crop_pct,
                                    data.decode_workers, log)
    train = _train_split(data, raw["train"], image_column, label_column, seed, accelerator, spec,
                         (holdout, *held_buckets) if held_buckets else None)
    return ImageData(train, splits["validation"], splits["test"], label_names)


def _train_split(data: DataRecipe, stream: IterableDataset, image_column: str, label_column: str, seed: int,
                 accelerator: Accelerator, spec, held_out: tuple[int, ...] | None) -> StreamedSplit:
    """This process's training stream, with the images a pass reads (the source's count, or
    ``data.max_train_samples``, less the held-out share) for the schedule's length."""
    count = data.max_train_samples
    known = 3000 if data.dataset == "synthetic" else stream_length(data.dataset, "train")
    if known is not None:
        count = min(count or known, known)
    if count is None:
        raise HfvisionError(f"data.streaming: cannot tell how many training images '{data.dataset}' has (no split "
                            f"metadata); set data.max_train_samples to the number to read per epoch")
    if held_out:
        count -= math.ceil((len(held_out) - 1) * count / held_out[0])  # about the held-out share
    decoded = open_train_stream(data, stream, image_column, label_column, seed, accelerator, spec.decode_size,
                                spec.crop_pct, held_out)
    shards = decoded.stream.n_shards
    workers = min(data.decode_workers or len(os.sched_getaffinity(0)), shards)
    return StreamedSplit(decoded, count, accelerator, workers if shards > 1 else 0)
