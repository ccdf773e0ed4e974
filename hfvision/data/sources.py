"""Load a data source into train/validation/test splits of decoded uint8 image tensors.

Sources: ``synthetic`` (built in), a local directory ``load_dataset`` reads (Parquet/Arrow, image
folders), or a Hub dataset id. Image and label columns are found from the features (``Image`` and
``ClassLabel``) unless named. The validation split is carved from train with a seeded, stratified split;
the source's test split stays untouched. Each split is decoded once into a decoded-image store
(``hfvision.data.store``: in parallel, on disk, reused by later runs; an unreadable file is caught at that
image, named by its path, else by split and index) and read back a batch at a time as RGB uint8 (B, 3, H, W);
resizing to the model's size, normalising and augmenting happen per batch (see ``transforms``). ``data.on_bad_image``: ``error`` stops at the first unreadable image with one line naming it;
``skip`` drops it and lists it in ``ImageSplit.skipped``.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, IterableDatasetDict, load_dataset
from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder
from datasets.utils.stratify import stratified_shuffle_split_generate_indices
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data import Dataset as TorchDataset

from hfvision.data.store import DecodePlan, StoredPixels, StoreRecord, open_store
from hfvision.data.synthetic import load_synthetic
from hfvision.errors import HfvisionError
from hfvision.recipe import DataRecipe, load_recipe

# When a dataset has several ClassLabel columns (CIFAR-100: fine_label, coarse_label), prefer these.
PREFERRED_LABEL_COLUMNS = ("label", "labels", "fine_label")
TEST_SPLIT_NAMES = ("test", "testing")
VAL_SPLIT_NAMES = ("validation", "valid", "val")


class StoredSplit(TorchDataset):
    """(pixels, label) pairs of a store; a batch is read in one call (``__getitems__``), so the DataLoader asks
    the disk for the rows of its batch and nothing else."""

    def __init__(self, pixels: StoredPixels, labels: torch.Tensor):
        self.pixels, self.labels = pixels, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.pixels[index], self.labels[index]

    def __getitems__(self, indices: list[int]):
        return [self.pixels.read_rows(np.asarray(indices, dtype=np.int64)), self.labels[indices]]


def _as_batch(batch):
    """``StoredSplit.__getitems__`` gives the batch whole; the DataLoader has nothing left to collate."""
    return batch


@dataclass
class ImageSplit:
    """Decoded images of one split: ``pixels`` uint8 (N, 3, H, W), a tensor or a store's ``StoredPixels``,
    ``labels`` int64 (N,), ``skipped``: the images ``data.on_bad_image=skip`` dropped, each as "name: reason",
    and ``store``: what the store did (built or reused, where, how long)."""

    pixels: torch.Tensor | StoredPixels
    labels: torch.Tensor
    skipped: list[str] = field(default_factory=list)
    store: StoreRecord | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def loader(self, batch_size: int, shuffle: bool) -> DataLoader:
        if isinstance(self.pixels, StoredPixels):
            return DataLoader(StoredSplit(self.pixels, self.labels), batch_size=batch_size, shuffle=shuffle,
                              collate_fn=_as_batch)
        return DataLoader(TensorDataset(self.pixels, self.labels), batch_size=batch_size, shuffle=shuffle)


@dataclass
class ImageData:
    train: ImageSplit
    validation: ImageSplit
    test: ImageSplit
    label_names: list[str]
    seconds: float = 0.0  # the data stage: splitting, and building or reusing the stores

    @property
    def skipped(self) -> list[str]:
        """Every image ``data.on_bad_image=skip`` dropped, as "name: reason": train, validation, then test."""
        return self.train.skipped + self.validation.skipped + self.test.skipped

    def splits(self) -> dict[str, ImageSplit]:
        return {"train": self.train, "validation": self.validation, "test": self.test}


@contextmanager
def _without_card_notice():
    """A local folder whose README has no YAML block makes huggingface_hub warn "Repo card metadata block was not
    found"; the README is documentation, not data, so the notice is held back while the folder loads."""
    card_logger = logging.getLogger("huggingface_hub.repocard")
    level = card_logger.level
    card_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        card_logger.setLevel(level)


def load_raw(dataset: str, streaming: bool = False) -> DatasetDict | IterableDatasetDict:
    """The source as a ``DatasetDict`` (an ``IterableDatasetDict`` when ``streaming``); a failure becomes one line
    naming the source."""
    if dataset == "synthetic":
        raw = load_synthetic()
        return IterableDatasetDict({k: v.to_iterable_dataset(num_shards=4) for k, v in raw.items()}) if streaming \
            else raw
    path = Path(dataset).expanduser()
    try:
        if path.exists():
            if not path.is_dir():
                raise HfvisionError(f"data.dataset: {dataset} is not a directory")
            listed = None if streaming else image_folder(path)
            if listed is None:
                with _without_card_notice():
                    listed = load_dataset(str(path), streaming=streaming)
            raw = listed
        else:
            raw = load_dataset(dataset, streaming=streaming)
    except HfvisionError:
        raise
    except Exception as exc:  # datasets raises many types; the user needs the source and the reason
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HfvisionError(f"data.dataset: could not load '{dataset}': {reason}") from None
    if not isinstance(raw, (DatasetDict, IterableDatasetDict)):
        raw = (IterableDatasetDict if streaming else DatasetDict)({"train": raw})
    return raw


IMAGE_EXTENSIONS = frozenset(extension.lower() for extension in ImageFolder.EXTENSIONS)


def image_folder(path: Path) -> DatasetDict | None:
    """A folder of class folders of images (``class/x.jpg``, or ``split/class/x.jpg`` with split folders named
    train, test, validation...), listed directly, as ``datasets``' imagefolder reads it (labels: the sorted class
    folder names); None for anything else, which ``load_dataset`` reads. ``load_dataset`` resolves each of its 66
    split patterns against every file (3.5 s for 2,000 photos, minutes for 200,000, on every run); a listing takes
    milliseconds."""
    files = sorted(p for p in path.rglob("*") if not any(part.startswith(".") for part in p.relative_to(path).parts)
                   and p.is_file())
    if not files or any(p.suffix.lower() not in IMAGE_EXTENSIONS for p in files):
        return None
    parts = [p.relative_to(path).parts for p in files]
    split_names = ("train", *TEST_SPLIT_NAMES, *VAL_SPLIT_NAMES)
    if all(len(part) == 2 for part in parts):
        by_split = {"train": list(zip(files, parts))}
    elif all(len(part) == 3 and part[0] in split_names for part in parts) and any(q[0] == "train" for q in parts):
        by_split = {name: [(f, q[1:]) for f, q in zip(files, parts) if q[0] == name] for name in dict.fromkeys(
            q[0] for q in parts)}
    else:
        return None
    classes = sorted({part[-2] for part in parts})
    features = Features({"image": Image(), "label": ClassLabel(names=classes)})
    return DatasetDict({name: Dataset.from_dict({"image": [str(f) for f, _ in rows],
                                                 "label": [classes.index(q[-2]) for _, q in rows]}, features=features)
                        for name, rows in by_split.items()})


def find_columns(features, image_column: str | None, label_column: str | None) -> tuple[str, str]:
    """Image and label columns: the named ones, else the single ``Image`` / ``ClassLabel`` feature."""
    names = list(features)
    for key, value in (("data.image_column", image_column), ("data.label_column", label_column)):
        if value is not None and value not in names:
            raise HfvisionError(f"{key}: '{value}' is not a column; columns are {', '.join(names)}")
    if image_column is None:
        images = [n for n, f in features.items() if isinstance(f, Image)]
        if len(images) != 1:
            raise HfvisionError(f"data.image_column: found {len(images)} image columns among "
                                f"{', '.join(names)}; name one in the recipe")
        image_column = images[0]
    if label_column is None:
        labels = [n for n, f in features.items() if isinstance(f, ClassLabel)]
        preferred = [n for n in PREFERRED_LABEL_COLUMNS if n in labels]
        if len(labels) == 1 or preferred:
            label_column = preferred[0] if preferred else labels[0]
        else:
            raise HfvisionError(f"data.label_column: found {len(labels)} class-label columns among "
                                f"{', '.join(names)}; name one in the recipe")
    return image_column, label_column


def decode_split(ds: Dataset, image_column: str, label_column: str, size: int | None,
                 on_bad_image: str = "error", split: str = "data", crop_pct: float | None = None,
                 workers: int | None = None, log=print) -> ImageSplit:
    """The split's images decoded once into its store (``hfvision.data.store``: built in ``workers`` processes,
    or reused), by the resize policy (``fit_to_input``: ``crop_pct``, then at most ``size``); images left with
    different sizes go to ``size``. An unreadable image stops here (``on_bad_image="error"``) or is dropped and
    listed (``"skip"``)."""
    labels = ds[label_column][:]  # a list (indexing the Column one item at a time is slow)
    plan = DecodePlan(size, crop_pct, on_bad_image, workers)
    pixels, kept_labels, skipped, record = open_store(ds, image_column, labels, plan, split, log=log)
    return ImageSplit(pixels, kept_labels, skipped, record)


def _subsample(ds: Dataset, limit: int | None, seed: int) -> Dataset:
    if limit is None or limit >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(limit))


def class_ids(classes: list, names: list[str]) -> list[int]:
    """``data.classes`` (names or ids, in the order given) as ids of ``names``."""
    ids = []
    for item in classes:
        if isinstance(item, str):
            if item not in names:
                raise HfvisionError(f"data.classes: '{item}' is not a class of the dataset; classes are {', '.join(names)}")
            ids.append(names.index(item))
        elif not 0 <= item < len(names):
            raise HfvisionError(f"data.classes: id {item} is out of range; the dataset has {len(names)} classes (0 to "
                                f"{len(names) - 1})")
        else:
            ids.append(item)
    if len(set(ids)) != len(ids):
        raise HfvisionError(f"data.classes: {classes} names a class twice (by name and by id)")
    return ids


def select_classes(ds: Dataset, label_column: str, ids: list[int], names: list[str]) -> Dataset:
    """The rows whose label is one of ``ids``, relabelled ``0..len(ids)-1`` in that order, with their names."""
    new_label = {old: new for new, old in enumerate(ids)}
    ds = ds.filter(lambda labels: [label in new_label for label in labels], input_columns=label_column, batched=True)
    features = ds.features.copy()
    features[label_column] = ClassLabel(names=[names[i] for i in ids])
    return ds.map(lambda labels: {label_column: [new_label[label] for label in labels]}, input_columns=label_column,
                  batched=True, features=features)


def split_dataset(raw: DatasetDict, recipe: DataRecipe, seed: int) -> tuple[DatasetDict, str, str, list[str]]:
    """Pick train/test, keep ``data.classes`` (re-indexed), carve a stratified validation split, apply the
    sample limits."""
    if "train" not in raw:
        raise HfvisionError(f"data.dataset: '{recipe.dataset}' has no train split (has {', '.join(raw)})")
    image_column, label_column = find_columns(raw["train"].features, recipe.image_column, recipe.label_column)
    train = raw["train"]
    if not isinstance(train.features[label_column], ClassLabel):
        train = train.class_encode_column(label_column)
    label_names = list(train.features[label_column].names)
    test_name = next((n for n in TEST_SPLIT_NAMES if n in raw), None)
    val_name = next((n for n in VAL_SPLIT_NAMES if n in raw), None)
    given = {name: raw[name] for name in (val_name, test_name) if name is not None}  # the source's own splits
    if recipe.classes is not None:
        ids = class_ids(recipe.classes, label_names)
        train = select_classes(train, label_column, ids, label_names)
        given = {name: select_classes(ds, label_column, ids, label_names) for name, ds in given.items()}
        label_names = [label_names[i] for i in ids]
    if val_name is not None:
        validation = given[val_name]
    else:
        train, validation = _stratified_split(train, recipe.val_fraction, label_column, seed, "validation")
    if test_name is not None:
        test = given[test_name]
    else:  # no official test split (e.g. one image folder): hold out the same fraction, stratified
        train, test = _stratified_split(train, recipe.val_fraction, label_column, seed + 1, "test")
    splits = DatasetDict({
        "train": _subsample(train, recipe.max_train_samples, seed),
        "validation": _subsample(validation, recipe.max_eval_samples, seed),
        "test": _subsample(test, recipe.max_eval_samples, seed),
    })
    return splits, image_column, label_column, label_names


def _stratified_split(train: Dataset, fraction: float, label_column: str, seed: int, held_out: str):
    """(the rest, the held-out ``fraction``), each class in both: ``Dataset.train_test_split(test_size=fraction,
    stratify_by_column=label_column, seed=seed)`` row for row (its sizes, its generator, its sampler), with the
    labels read at once (datasets reads them one row at a time: 20 s for CIFAR-10's 50,000). One line when the
    fraction leaves a side too small for every class to appear in it."""
    n_test = math.ceil(fraction * len(train))
    labels = np.asarray(train[label_column][:])  # one read; datasets' own split reads the column row by row
    try:
        if len(train) - n_test == 0 or n_test == 0:
            raise ValueError(f"a side of {len(train)} images would be empty")
        train_rows, test_rows = next(stratified_shuffle_split_generate_indices(
            labels, len(train) - n_test, n_test, rng=np.random.default_rng(seed)))
    except ValueError as exc:
        classes = len(train.features[label_column].names)
        raise HfvisionError(f"data.val_fraction: {fraction} of {len(train)} images cannot give both the training "
                            f"and the {held_out} split one image of each of the {classes} classes ({exc}); "
                            f"choose a fraction nearer 0.1") from None
    return train.select(train_rows), train.select(test_rows)


def decode_splits(splits: DatasetDict, image_column: str, label_column: str, decode_size: int | None,
                  label_names: list[str], on_bad_image: str = "error", crop_pct: float | None = None,
                  workers: int | None = None, log=print) -> ImageData:
    """The train/validation/test splits of ``split_dataset``, each decoded once into its store."""
    decoded = {name: decode_split(ds, image_column, label_column, decode_size, on_bad_image, name, crop_pct,
                                  workers, log)
               for name, ds in splits.items()}
    return ImageData(decoded["train"], decoded["validation"], decoded["test"], label_names)


def load_eval_split(dataset: str, split: str, decode_size: int | None, max_samples: int | None = None,
                    image_column: str | None = None, label_column: str | None = None,
                    seed: int = 42, on_bad_image: str = "error",
                    crop_pct: float | None = None) -> tuple[ImageSplit, list[str]]:
    """One named split of a source, for evaluating a saved model on it."""
    raw = load_raw(dataset)
    if split not in raw:
        raise HfvisionError(f"--split: '{dataset}' has no split '{split}' (has {', '.join(raw)})")
    ds = raw[split]
    image_column, label_column = find_columns(ds.features, image_column, label_column)
    names = list(ds.features[label_column].names) if isinstance(ds.features[label_column], ClassLabel) else None
    if names is None:
        raise HfvisionError(f"data.label_column: '{label_column}' is not a class-label column")
    return decode_split(_subsample(ds, max_samples, seed), image_column, label_column, decode_size, on_bad_image,
                        split, crop_pct), names


def load_recipe_split(data: DataRecipe, seed: int, split: str, decode_size: int | None, max_samples: int | None = None,
                      sample_seed: int = 0, crop_pct: float | None = None) -> tuple[ImageSplit, list[str]]:
    """One split (train/validation/test) as a run with ``data`` and ``seed`` made it, e.g. a photo folder's
    held-out test part; ``max_samples`` of it drawn with ``sample_seed``."""
    splits, image_column, label_column, label_names = split_dataset(load_raw(data.dataset), data, seed)
    if split not in splits:
        raise HfvisionError(f"--split: a run's splits are {', '.join(splits)}, not '{split}'")
    return decode_split(_subsample(splits[split], max_samples, sample_seed), image_column, label_column, decode_size,
                        data.on_bad_image, split, crop_pct), label_names


def load_run_split(run_dir: str | Path, split: str, decode_size: int | None, max_samples: int | None = None,
                   sample_seed: int = 0, crop_pct: float | None = None, what: str = "--data") -> tuple[ImageSplit,
                                                                                                     list[str]]:
    """``split`` of the data a run dir was trained on, carved as that run carved it (a photo folder's held-out
    test part); ``what`` names the missing option when ``run_dir`` is not a run dir."""
    recipe_path = Path(run_dir) / "recipe.yaml"
    if not recipe_path.is_file():
        raise HfvisionError(f"{what}: '{run_dir}' is not a run dir (no recipe.yaml); name the data with --data")
    recipe = load_recipe(recipe_path)
    return load_recipe_split(recipe.data, recipe.seed, split, decode_size, max_samples, sample_seed, crop_pct)
