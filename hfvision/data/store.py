"""The decoded-image store: a split's images decoded once, in parallel, to uint8 at the decode size, on disk.

A run used to decode every image of every split into one in-RAM tensor, in one thread, on every run. Now each
split is decoded once into ``$HFVISION_CACHE/stores/<key>/`` (else ``~/.cache/hfvision/stores``) and read back a batch at a time:

- ``pixels.u8``: the images as one raw uint8 array (N, 3, s, s), s the split's common side (the decode size, or
  the images' own side when they all share one that is smaller: CIFAR stays 32 px); ``labels.npy`` (int64);
  ``manifest.json``: the key, the count, the side, the file's size, mtime and SHA-256, the skipped images. On reuse
  the size is checked, and the checksum too when the file's mtime is not the one recorded (a file written since). A store is
  built in a ``.building-<pid>`` directory and renamed into place, manifest last, so a half-written store is
  never found; one that no longer matches its manifest (truncated, overwritten) is said in one line and rebuilt.
- The key (``store_key``) hashes everything the pixels depend on: the source (a file's path, size and mtime,
  or the bytes themselves when the dataset holds them), the rows in order (split, limits, classes), the labels,
  the decode size, the resize policy (``crop_pct``), ``on_bad_image``, ``PREPROCESSING_VERSION`` and the
  store format. Change any of them and the key changes.
- Building: one pass over the image headers (each image's side, ``images.output_side``, and the unreadable
  ones), then the decode in ``decode_workers`` processes (forked; default: the cores this process may use), each
  writing its rows into the file at their offsets with ``pwrite``. The file is allocated whole first, so a full
  disk is found before any decoding, in one line. Under several processes (torchrun, accelerate launch, two runs
  of a sweep) the first to take the store's lock builds it while the others wait, then all read it.
- Reading: ``StoredPixels`` reads the rows a batch asks for with ``pread`` (contiguous rows in one call): the
  process holds a few batches, the kernel's page cache the rest. It is not ``mmap``ed on purpose: touched pages
  of a mapping count in the process's resident memory, so a store larger than RAM would show as RAM in use.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, Image
from PIL import Image as PILImage

from hfvision.data.images import UnreadableImage, unreadable_reason, decode_fitted, output_side, resize_rgb
from hfvision.errors import HfvisionError
from hfvision.fileio import disk_full_message

# Bump whenever decoding or resizing changes (hfvision/data/images.py): stores and feature-cache entries keyed on an
# older version are then never served. tests/test_store.py pins a hash of that code to this number.
PREPROCESSING_VERSION = 5  # 4: decode-time resize by torch's uint8 kernel; 5: fewer copies (same pixels)
STORE_FORMAT = 1
DEFAULT_ROOT = "~/.cache/hfvision"  # beside the feature cache's features/
ROWS_PER_TASK = 64  # rows one worker decodes per task: enough to amortise the hand-off, small enough to balance


@dataclass(frozen=True)
class DecodePlan:
    """How a split's images become stored pixels: at most ``size`` (None: native, one size required), by the
    resize policy ``crop_pct``, unreadable images per ``on_bad_image``, in ``workers`` processes."""

    size: int | None
    crop_pct: float | None = None
    on_bad_image: str = "error"
    workers: int | None = None

    def processes(self) -> int:
        return self.workers or len(os.sched_getaffinity(0))


@dataclass
class StoreRecord:
    """What the log and ``metrics.json`` say of one split's store."""

    path: str
    built: bool
    seconds: float
    images: int
    side: int
    sha256: str  # of the pixel file: equal pixels, equal checksum

    def as_dict(self) -> dict:
        return {"path": self.path, "built": self.built, "seconds": round(self.seconds, 3), "images": self.images,
                "side": self.side, "sha256": self.sha256}


class StoredPixels:
    """A store's uint8 (N, 3, s, s) pixels, indexed like a tensor (an int, a slice, a list or tensor of indices);
    each index reads those rows from disk. ``content_sha256`` is the file's, from the manifest."""

    def __init__(self, path: Path, count: int, side: int, content_sha256: str):
        self.path, self.count, self.side, self.content_sha256 = Path(path), count, side, content_sha256
        self.row_bytes = 3 * side * side
        self._fd, self._pid = None, None

    dtype = torch.uint8

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.count, 3, self.side, self.side))

    def __len__(self) -> int:
        return self.count

    def __getstate__(self):  # DataLoader workers and spawned processes open their own descriptor
        return {**self.__dict__, "_fd": None, "_pid": None}

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def read_rows(self, rows: np.ndarray) -> torch.Tensor:
        """uint8 (len(rows), 3, s, s) of ``rows`` in the order given; runs of consecutive rows are one read."""
        out = np.empty((len(rows), self.row_bytes), dtype=np.uint8)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        breaks = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
        fd = self._descriptor()
        for run_positions in np.split(np.arange(len(rows)), breaks) if len(rows) else []:
            first, count = int(sorted_rows[run_positions[0]]), len(run_positions)
            data = os.pread(fd, count * self.row_bytes, first * self.row_bytes)
            if len(data) != count * self.row_bytes:
                raise HfvisionError(f"data: the store {self.path.parent} is shorter than its manifest says; delete "
                                    f"it and run again")
            out[order[run_positions]] = np.frombuffer(data, dtype=np.uint8).reshape(count, self.row_bytes)
        return torch.from_numpy(out).view(len(rows), 3, self.side, self.side)

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, (int, np.integer)):
            return self.read_rows(np.array([range(self.count)[index]]))[0]
        if isinstance(index, slice):
            return self.read_rows(np.arange(self.count)[index])
        rows = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < -self.count or rows.max() >= self.count):
            raise IndexError(f"index out of range for {self.count} stored images")
        return self.read_rows(rows % max(self.count, 1))


# ---------------------------------------------------------------------------------------------- the key


def _image_values(ds: Dataset, image_column: str):
    """The column's raw values, ``{"bytes", "path"}``, in row order (nothing decoded)."""
    encoded = ds.select_columns([image_column]).cast_column(image_column, Image(decode=False))
    return (value for batch in encoded.iter(batch_size=1024) for value in batch[image_column])


def _source_digest(ds: Dataset, image_column: str) -> str:
    """Each row's source in order: a file by path, size and mtime; bytes held by the dataset by their hash."""
    digest = hashlib.sha256()
    for value in _image_values(ds, image_column):
        data, path = value.get("bytes"), value.get("path")
        if data is not None:
            digest.update(b"b" + hashlib.sha256(data).digest())
        elif path:
            try:
                stat = os.stat(path)
                digest.update(f"f{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
            except OSError:
                digest.update(f"m{path}\0".encode())  # missing: found again (and named) when decoding
        else:
            digest.update(b"n")
    return digest.hexdigest()


def store_key(ds: Dataset, image_column: str, labels: list[int], plan: DecodePlan, split: str) -> str:
    """The store's key: every input the stored pixels depend on (see the module docstring)."""
    key = {"source": _source_digest(ds, image_column), "split": split, "rows": len(ds),
           "labels": hashlib.sha256(np.asarray(labels, dtype=np.int64).tobytes()).hexdigest(),
           "size": plan.size, "crop_pct": plan.crop_pct, "on_bad_image": plan.on_bad_image,
           "preprocessing": PREPROCESSING_VERSION, "format": STORE_FORMAT}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


# ---------------------------------------------------------------------------------------------- building


def _name(value: dict, split: str, index: int) -> str:
    """A file read from disk is named by its path; an image stored in the dataset by split and index."""
    if value.get("bytes") is None and value.get("path"):
        return value["path"]
    return f"{split}[{index}]" + (f" ({value['path']})" if value.get("path") else "")


_WORK: dict = {}  # what forked workers read: set before the pool starts, inherited without pickling


def _values(rows) -> list[dict]:
    """Raw image values (``{"bytes", "path"}``) of ``rows`` (a range or a list) of the split, read from its
    memory-mapped dataset."""
    return _WORK["encoded"][rows][_WORK["image_column"]]


def _header_sides(task: tuple[int, int]) -> list[int | str]:
    """For rows ``task = (first, stop)``: the side each will be stored at, from its header alone, or
    "name: reason" when it cannot be read."""
    plan, split = _WORK["plan"], _WORK["split"]
    sides = []
    for index, value in enumerate(_values(slice(*task)), start=task[0]):
        try:
            source = value.get("bytes") if value.get("bytes") is not None else value.get("path")
            if source is None:
                raise UnreadableImage("image value has neither bytes nor a path")
            with PILImage.open(io.BytesIO(source) if isinstance(source, bytes) else _existing(source)) as image:
                if plan.size is None:  # native size: every image must share one, so a truncated one is found now
                    image.load()
                width, height = image.size
        except (UnreadableImage, OSError, SyntaxError, ValueError, PILImage.DecompressionBombError) as exc:
            sides.append(f"{_name(value, split, index)}: {exc if isinstance(exc, UnreadableImage) else unreadable_reason(exc)}")
            continue
        if plan.size is None:
            sides.append(height if height == width else f"{height}x{width}")
        else:
            sides.append(output_side(height, width, plan.size, plan.crop_pct))
    return sides


def _existing(path: str) -> str:
    if not Path(path).is_file():
        raise FileNotFoundError("no such file")
    if Path(path).stat().st_size == 0:
        raise OSError("empty file")
    return path


def _decode_rows(task: tuple[int, int]) -> list[tuple[int, str]]:
    """Decode kept rows ``task = (first, stop)`` and write each at its offset in the pixel file; returns the rows
    that failed to decode (a truncated file whose header read fine), each with "name: reason"."""
    plan, side, kept, split = _WORK["plan"], _WORK["side"], _WORK["kept"], _WORK["split"]
    torch.set_num_threads(1)
    failed = []
    fd = os.open(_WORK["pixels_path"], os.O_WRONLY)
    try:
        for row, value in zip(range(*task), _values(kept[task[0]:task[1]].tolist())):
            index = int(kept[row])
            try:
                array = decode_fitted(value, plan.size or side, plan.crop_pct, _name(value, split, index))
            except UnreadableImage as exc:
                failed.append((row, str(exc)))
                continue
            if array.shape[:2] != (side, side):
                array = resize_rgb(array, side)
            os.pwrite(fd, np.ascontiguousarray(array.transpose(2, 0, 1)), row * 3 * side * side)
    finally:
        os.close(fd)
    return failed


def _tasks(count: int, processes: int) -> list[tuple[int, int]]:
    """Row ranges of at most ``ROWS_PER_TASK``, at least 8 per process when there are enough rows (balance)."""
    rows = max(1, min(ROWS_PER_TASK, -(-count // (8 * processes))))
    return [(first, min(first + rows, count)) for first in range(0, count, rows)]


def _pool_map(function, tasks: list, processes: int) -> list:
    """``function`` over ``tasks`` in forked processes (in this one when one process, or one task, is enough)."""
    if processes <= 1 or len(tasks) <= 1:
        return [function(task) for task in tasks]
    context = multiprocessing.get_context("fork")
    with context.Pool(min(processes, len(tasks))) as pool:
        return pool.map(function, tasks, chunksize=max(1, len(tasks) // (8 * processes)))


def _bad_image(on_bad_image: str, problems: list[str], split: str, total: int) -> None:
    """Stop on the first unreadable image (``error``), or when every image of the split is unreadable."""
    if problems and on_bad_image == "error":
        raise HfvisionError(f"data: unreadable image {problems[0]} (data.on_bad_image=skip drops such images)")
    if problems and len(problems) == total:
        raise HfvisionError(f"data: all {total} images of the {split} split are unreadable, e.g. {problems[0]}")


def _common_side(sides: list[int], plan: DecodePlan) -> int:
    """The split's stored side: the one all images share, else the decode size (smaller images upsampled)."""
    distinct = set(sides)
    if len(distinct) == 1:
        return distinct.pop()
    if plan.size is None:
        raise HfvisionError("data.image_size: images have different sizes; set data.image_size")
    return plan.size


def _allocate(path: Path, nbytes: int, where: Path) -> None:
    """The pixel file at its full size, its blocks reserved now: a full disk is found before any decoding."""
    with open(path, "wb") as handle:
        try:
            if nbytes:
                os.posix_fallocate(handle.fileno(), 0, nbytes)
        except OSError as exc:
            message = disk_full_message(where, exc)
            raise HfvisionError(f"data: cannot build the decoded-image store ({nbytes / 1e6:.1f} MB): "
                                f"{message or exc}; free space or set HFVISION_CACHE to a larger disk") from None


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def _build(staging: Path, ds: Dataset, image_column: str, labels: list[int], plan: DecodePlan,
           split: str) -> dict:
    """Header pass, allocation, parallel decode into ``staging``; returns the manifest (written last)."""
    encoded = ds.select_columns([image_column]).cast_column(image_column, Image(decode=False))
    _WORK.update(encoded=encoded, image_column=image_column, plan=plan, split=split)
    try:
        processes = plan.processes()
        results = [side for part in _pool_map(_header_sides, _tasks(len(ds), processes), processes) for side in part]
        problems = [r for r in results if isinstance(r, str)]
        _bad_image(plan.on_bad_image, problems, split, len(results))
        kept = np.array([i for i, r in enumerate(results) if not isinstance(r, str)], dtype=np.int64)
        side = _common_side([results[i] for i in kept], plan)
        pixels_path = staging / "pixels.u8"
        _allocate(pixels_path, len(kept) * 3 * side * side, staging)
        _WORK.update(kept=kept, side=side, pixels_path=pixels_path)
        failed = [f for part in _pool_map(_decode_rows, _tasks(len(kept), processes), processes) for f in part]
    finally:
        _WORK.clear()
    _bad_image(plan.on_bad_image, [reason for _, reason in failed], split, len(results) if failed else 0)
    if failed:
        kept = _drop_rows(pixels_path, kept, [row for row, _ in failed], side)
    if len(kept) == 0:
        raise HfvisionError(f"data: all {len(results)} images of the {split} split are unreadable, e.g. "
                            f"{(problems + [r for _, r in failed])[0]}")
    kept_labels = np.asarray(labels, dtype=np.int64)[kept]
    np.save(staging / "labels.npy", kept_labels)
    return {"format": STORE_FORMAT, "preprocessing": PREPROCESSING_VERSION, "split": split, "count": len(kept),
            "side": side, "pixels_bytes": pixels_path.stat().st_size, "pixels_sha256": _file_sha256(pixels_path),
            "skipped": problems + [reason for _, reason in failed], "created": time.strftime("%Y-%m-%d %H:%M:%S")}


def _drop_rows(pixels_path: Path, kept: np.ndarray, failed_rows: list[int], side: int) -> np.ndarray:
    """Rewrite the pixel file without ``failed_rows`` (images whose header read but whose data did not)."""
    keep = np.setdiff1d(np.arange(len(kept)), failed_rows)
    stored = StoredPixels(pixels_path, len(kept), side, "")
    compact = pixels_path.with_suffix(".compact")
    with open(compact, "wb") as handle:
        for start in range(0, len(keep), 1024):
            handle.write(stored.read_rows(keep[start:start + 1024]).numpy().tobytes())
    os.replace(compact, pixels_path)
    return kept[keep]


# ---------------------------------------------------------------------------------------------- finding


def store_root() -> Path:
    """``$HFVISION_CACHE/stores``, else ``~/.cache/hfvision/stores``."""
    return Path(os.environ.get("HFVISION_CACHE") or DEFAULT_ROOT).expanduser() / "stores"


@contextmanager
def _store_lock(root: Path, key: str):
    """The store's lock: one process builds, the others (ranks of one run, runs of a sweep) wait, then read."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{key}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check(directory: Path) -> tuple[dict | None, str | None]:
    """(the manifest, None) when ``directory`` is a complete store of this version; else (None, the problem)."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        labels = np.load(directory / "labels.npy")
        size = (directory / "pixels.u8").stat().st_size
    except (OSError, ValueError) as exc:
        return None, f"unreadable ({type(exc).__name__})"
    if manifest.get("format") != STORE_FORMAT or manifest.get("preprocessing") != PREPROCESSING_VERSION:
        return None, (f"built by another hfvision (preprocessing version {manifest.get('preprocessing')}, this one "
                      f"{PREPROCESSING_VERSION})")
    if size != manifest.get("pixels_bytes") or size != manifest["count"] * 3 * manifest["side"] ** 2:
        return None, f"pixels.u8 is {size} bytes, the manifest says {manifest.get('pixels_bytes')}"
    if len(labels) != manifest["count"]:
        return None, f"labels.npy has {len(labels)} labels for {manifest['count']} images"
    unchanged = (directory / "pixels.u8").stat().st_mtime_ns == manifest.get("pixels_mtime_ns")
    if not unchanged and _file_sha256(directory / "pixels.u8") != manifest.get("pixels_sha256"):
        return None, "pixels.u8 does not match its checksum"
    return manifest, None


def open_store(ds: Dataset, image_column: str, labels: list[int], plan: DecodePlan, split: str,
               root: Path | None = None, log=print) -> tuple[StoredPixels, torch.Tensor, list[str], StoreRecord]:
    """The split's store, reused when one with its key is complete and intact, else built (once, under the
    lock). Returns (pixels, labels, skipped images, what happened)."""
    started = time.perf_counter()
    root = Path(root) if root is not None else store_root()
    key = store_key(ds, image_column, labels, plan, split)
    directory = root / key
    with _store_lock(root, key):
        manifest, problem = _check(directory) if directory.exists() else (None, None)
        built = manifest is None
        if built:
            if problem:
                log(f"data: the {split} store {directory} is {problem}: rebuilding it")
            manifest = _build_into(directory, ds, image_column, labels, plan, split)
    pixels = StoredPixels(directory / "pixels.u8", manifest["count"], manifest["side"], manifest["pixels_sha256"])
    record = StoreRecord(str(directory), built, time.perf_counter() - started, manifest["count"], manifest["side"],
                         manifest["pixels_sha256"])
    return pixels, torch.from_numpy(np.load(directory / "labels.npy")), list(manifest["skipped"]), record


def _build_into(directory: Path, ds: Dataset, image_column: str, labels: list[int], plan: DecodePlan,
                split: str) -> dict:
    """Build in a staging directory beside ``directory`` and rename it into place, manifest last."""
    staging = directory.with_name(f"{directory.name}.building-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        manifest = _build(staging, ds, image_column, labels, plan, split)
        manifest["pixels_mtime_ns"] = (staging / "pixels.u8").stat().st_mtime_ns  # untouched since: no re-hash
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(staging, directory)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        message = disk_full_message(directory.parent, exc)
        if message is None:
            raise
        raise HfvisionError(f"data: cannot build the decoded-image store: {message}; free space or set "
                            f"HFVISION_CACHE to a larger disk") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest
