"""The input pipeline alone, hfvision's batched path vs per-sample torchvision transforms (``--input-pipeline``):
crop/flip/resize/normalise, in process and in DataLoader workers, at 32 and 224 px."""

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image as PILImage
from torchvision import transforms as T

from benchmarks.results import CIFAR10_MEAN, CIFAR10_STD, met, write_results
from benchmarks.timing import alternate, synchronize
from hfvision.data.sources import decode_split, find_columns, load_raw
from hfvision.data.transforms import BatchPreprocessor
from hfvision.evaluation.compare import markdown_table
from hfvision.recipe import AugmentRecipe
from hfvision.spec import InputSpec

BATCH = 128
FLOOR = "floor: allocate and fill a new float batch"


class PerSampleImages(torch.utils.data.Dataset):
    """PIL images through a per-sample torchvision transform, as ``datasets.with_transform`` pipelines do."""

    def __init__(self, images, transform):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.transform(self.images[index])


def decoded_images(cifar10: Path, count: int):
    """``count`` training images decoded once (decode is not timed): uint8 (N, 3, 32, 32) and PIL, plus the source."""
    source = str(cifar10) if cifar10.exists() else "synthetic"
    train = load_raw(source)["train"]
    train = train.select(range(min(count, len(train))))
    image_column, label_column = find_columns(train.features, None, None)
    pixels = decode_split(train, image_column, label_column, None).pixels
    return pixels, [PILImage.fromarray(image.permute(1, 2, 0).numpy()) for image in pixels], source


def images_per_second(batches: Callable, count: int, device) -> Callable[[], float]:
    """A measure: ``batches()`` (producing every batch of ``count`` images on ``device``) timed -> images/s."""
    def measure() -> float:
        synchronize(device)
        start = time.perf_counter()
        batches()
        synchronize(device)
        return count / (time.perf_counter() - start)
    return measure


def on_one_thread(measure: Callable[[], float]) -> Callable[[], float]:
    def measure_on_one_thread() -> float:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return measure()
        finally:
            torch.set_num_threads(threads)
    return measure_on_one_thread


def measures_at(size: int, pixels: torch.Tensor, pil_images: list, device, workers: int) -> dict:
    """Every pipeline at ``size`` as a measure; the DataLoader's workers are started (they live as long as it)."""
    preprocessor = BatchPreprocessor(InputSpec(size, CIFAR10_MEAN, CIFAR10_STD),
                                     AugmentRecipe(random_crop_padding=4, horizontal_flip=True))
    per_sample = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]
                           + ([T.Resize(size)] if size != 32 else [])
                           + [T.ToTensor(), T.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
    generator = torch.Generator().manual_seed(0)
    no_labels = torch.zeros(BATCH, dtype=torch.long)
    starts = range(0, len(pixels), BATCH)
    loader = torch.utils.data.DataLoader(PerSampleImages(pil_images, per_sample), batch_size=BATCH,
                                         num_workers=workers, persistent_workers=True)

    def batched():
        for first in starts:
            chunk = pixels[first:first + BATCH]
            preprocessor(chunk.to(device), no_labels[:len(chunk)], train=True, generator=generator)

    def per_sample_in_process():
        for first in starts:
            torch.stack([per_sample(image) for image in pil_images[first:first + BATCH]]).to(device)

    def per_sample_workers():
        for x in loader:
            x.to(device)

    def output_floor():
        """Only allocating each batch's new float32 tensor at the size and writing it once (a fill: nothing read,
        no arithmetic), under the process's allocator: the least any pipeline returning new tensors does."""
        for first in starts:
            torch.empty((len(pixels[first:first + BATCH]), 3, size, size), device=device).fill_(0.0)

    measures = {name: images_per_second(batches, len(pixels), device) for name, batches in (
        ("hfvision batched", batched), (FLOOR, output_floor), ("per-sample, in process", per_sample_in_process),
        (f"per-sample, DataLoader {workers} workers", per_sample_workers))}
    measures["hfvision batched, 1 thread"] = on_one_thread(measures["hfvision batched"])
    measures["per-sample, in process, 1 thread"] = on_one_thread(measures["per-sample, in process"])
    per_sample_workers()  # starts the workers
    return measures


def summary(speeds: dict[str, float]) -> dict:
    """The ratios the notes and targets quote, at one size."""
    best_usual = max(v for k, v in speeds.items() if k.startswith("per-sample") and "1 thread" not in k)
    return {"images_per_second": speeds, "ratio_to_best_per_sample": speeds["hfvision batched"] / best_usual,
            "ratio_on_one_core": speeds["hfvision batched, 1 thread"] / speeds["per-sample, in process, 1 thread"],
            "floor_to_best_per_sample": speeds[FLOOR] / best_usual}


def notes(results: dict, images: int, source: str, rounds: int, device) -> list[str]:
    return [f"{images} {'CIFAR-10' if source != 'synthetic' else 'synthetic'} training images decoded once "
            f"beforehand (decoding is not timed); random crop (pad 4) + horizontal flip at 32 px, bilinear resize to "
            f"the size, normalise; batches of {BATCH}; {rounds} alternated rounds, median.",
            "hfvision: `BatchPreprocessor` on uint8 batches (on this machine's device: "
            f"{device.type}); per-sample: torchvision `RandomCrop`, `RandomHorizontalFlip`, `Resize`, `ToTensor`, "
            "`Normalize` per PIL image and a stack, in the main process or in DataLoader workers.",
            "Both ways on 2 threads/processes (the machine's cores), and on one thread each (per-core efficiency; "
            "the 1-thread rows compare with each other).",
            "Target at 224 px: >= 5x the faster per-sample way on the same cores: "
            f"{met(results[224]['ratio_to_best_per_sample'], 5)}; on one core "
            f"{results[224]['ratio_on_one_core']:.1f}x; at 32 px: {results[32]['ratio_to_best_per_sample']:.1f}x "
            f"(one core {results[32]['ratio_on_one_core']:.1f}x).",
            "Floor: only allocating and filling the new float batches (nothing read, no arithmetic) is "
            f"{results[224]['floor_to_best_per_sample']:.1f}x the faster per-sample way at 224 px "
            f"({results[32]['floor_to_best_per_sample']:.1f}x at 32 px): the most a pipeline returning new tensors "
            "reaches under this process's memory allocator."]


def run(args, device, env: dict) -> dict:
    pixels, pil_images, source = decoded_images(args.cifar10, args.pipeline_images)
    rows, results = [], {}
    for size in (32, 224):
        measures = measures_at(size, pixels, pil_images, device, args.workers)
        speeds = {name: statistics.median(v) for name, v in alternate(measures, args.rounds).items()}
        del measures  # and with them the DataLoader: its workers stop
        results[size] = summary(speeds)
        for name, value in speeds.items():
            reference = speeds["hfvision batched, 1 thread" if "1 thread" in name else "hfvision batched"]
            rows.append({"size": f"{size} px", "pipeline": name, "images/s": f"{value:,.0f}",
                         "hfvision is (same threads)": f"{reference / value:.1f}x"})
    write_results(args, device, env, "input_pipeline", "Input pipeline alone: batched vs per-sample",
                  notes(results, len(pixels), source, args.rounds, device), markdown_table(rows, list(rows[0]), str),
                  {"results": results, "images": len(pixels), "source": source})
    return results
