"""Run-directory writes that never leave half a file or directory behind.

Every directory (``best/``, ``last/``, ``checkpoint/``) is written into a staging sibling (``NAME.tmp``) and
renamed into place (``commit_staged``), so a run killed mid-write keeps the previous complete copy;
``recover_interrupted`` repairs the one window between the two renames. ``atomic_directory`` is the
one-process form; a multi-process writer stages on the main process, lets every process write, then commits.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
from pathlib import Path

# A write that fails with less than this free on its file system is reported as a full disk: torch's zip writer
# reports ENOSPC as "RuntimeError: [enforce fail at inline_container.cc] unexpected pos", without the errno.
NEARLY_FULL_BYTES = 64 << 20


def staging_path(path: str | os.PathLike) -> Path:
    """An empty ``NAME.tmp`` beside ``path``, ready to be filled and committed."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit_staged(path: str | os.PathLike) -> None:
    """Replace ``path`` by its filled staging dir: old copy aside, new one in, old one removed."""
    path = Path(path)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike):
    """Yield a staging dir; on success it replaces ``path``; on failure it is removed and ``path`` kept."""
    tmp = staging_path(path)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    commit_staged(path)


def recover_interrupted(path: str | os.PathLike) -> None:
    """If a run died between the two renames of ``commit_staged``, put the previous copy back."""
    path = Path(path)
    old = path.with_name(path.name + ".old")
    if not path.exists() and old.exists():
        old.rename(path)


def finite_json(value):
    """``value`` with every NaN and infinity replaced by None, so that it serialises as strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    return value


def write_json_atomic(path: str | os.PathLike, data) -> None:
    """Strict JSON (a non-finite number is written as null, never as a bare ``NaN``), replaced in one rename."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(finite_json(data), indent=2, allow_nan=False))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def disk_full_message(path: str | os.PathLike, exc: BaseException) -> str | None:
    """"no space left on device at PATH (N MB free)" when ``exc`` is, or looks like, a full disk; else None."""
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        free = None
    if getattr(exc, "errno", None) == errno.ENOSPC or (free is not None and free < NEARLY_FULL_BYTES):
        where = f"{path} ({free / 1e6:.1f} MB free)" if free is not None else str(path)
        return f"no space left on device at {where}"
    return None
