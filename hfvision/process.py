"""Process-wide setup that every command does first (``hfvision.cli.run_cli``): here, how the C library's malloc
keeps freed memory. It imports nothing of hfvision."""

from __future__ import annotations

import ctypes
import os
import platform


def reuse_freed_memory() -> bool:
    """Have glibc's malloc keep freed large blocks for reuse by this process instead of handing them back to the
    kernel; return whether it changed anything.

    By default glibc serves each block above 32 MiB with a fresh ``mmap`` and unmaps it when freed, so every CPU
    training batch at 224 px (77 MB of input for 128 images, and the model's activations) is faulted in page by
    page again: 18,816 page faults per input batch, more time than resizing it (``benchmarks/input_pipeline_cpu.md``).
    Raising the mmap and trim thresholds to 1 GiB keeps such blocks in the heap, as the jemalloc/tcmalloc that
    PyTorch's CPU tuning guide preloads do; the process holds on to its peak memory. Only on Linux with glibc, and
    not when the environment already configures malloc (``MALLOC_*`` variables, ``GLIBC_TUNABLES``, ``LD_PRELOAD``).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if ("GLIBC_TUNABLES" in os.environ or "LD_PRELOAD" in os.environ  # a preloaded jemalloc/tcmalloc, or own settings
            or any(name.startswith("MALLOC_") for name in os.environ)):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
    try:
        libc = ctypes.CDLL(None)  # the C library this process already uses
        mmap_set = libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)  # older glibc refuses more than 32 MiB: returns 0
        trim_set = libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
    except (OSError, AttributeError):
        return False
    return bool(mmap_set and trim_set)
