"""Probe: thp_step.py with glibc mallopt (MALLOPT=1: no mmap for large blocks, no trimming) or without (MALLOPT=0); pair them with farm-bench as in thp_step.py (probe, not a benchmark)."""
import os, sys, ctypes
if os.environ.get("MALLOPT") == "1":
    libc = ctypes.CDLL("libc.so.6")
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    print("mallopt", libc.mallopt(M_MMAP_THRESHOLD, 1 << 30), libc.mallopt(M_TRIM_THRESHOLD, 1 << 31 - 1), file=sys.stderr)
exec(open("benchmarks/probes/thp_step.py").read())
