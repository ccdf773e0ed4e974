"""Run-directory writes that never leave half a file or directory behind.

Every directory (``best/``, ``last/``, ``checkpoint/``) is written next to its final place and renamed
into it, so a run killed mid-write keeps the previous complete copy.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike):
    """Yield a temporary sibling dir; on success it replaces ``path`` (old copy removed after the rename)."""
    path = Path(path)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def recover_interrupted(path: str | os.PathLike) -> None:
    """If a run died between the two renames of ``atomic_directory``, put the previous copy back."""
    path = Path(path)
    old = path.with_name(path.name + ".old")
    if not path.exists() and old.exists():
        old.rename(path)


def write_json_atomic(path: str | os.PathLike, data) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
