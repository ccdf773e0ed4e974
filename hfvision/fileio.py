"""Run-directory writes that never leave half a file or directory behind.

Every directory (``best/``, ``last/``, ``checkpoint/``) is written into a staging sibling (``NAME.tmp``) and
renamed into place (``commit_staged``), so a run killed mid-write keeps the previous complete copy;
``recover_interrupted`` repairs the one window between the two renames. ``atomic_directory`` is the
one-process form; a multi-process writer stages on the main process, lets every process write, then commits.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path


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


def write_json_atomic(path: str | os.PathLike, data) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
