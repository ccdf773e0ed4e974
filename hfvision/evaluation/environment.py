"""What a result was measured on: hardware, package versions, git commit."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata

import torch

PACKAGES = ("torch", "torchvision", "transformers", "accelerate", "datasets", "timm", "evaluate", "peft", "captum")


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"python": platform.python_version(), "packages": versions, "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "gpu": gpu, "git_sha": git_sha()}
