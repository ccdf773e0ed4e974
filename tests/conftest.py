"""Shared fixtures. Every test runs offline: a stray Hub call fails at once instead of waiting."""

import contextlib
import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HFVISION_CACHE", tempfile.mkdtemp(prefix="hfvision-test-features-"))  # not ~/.cache

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

# Under pytest-xdist (`-n 2`) each worker takes one of the two cores.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)

REPO = Path(__file__).resolve().parents[1]
CIFAR10 = REPO.parent / "shared" / "data" / "cifar10"


def tiny_recipe_overrides(output_dir, **extra) -> list[str]:
    """Overrides that make any recipe a few-second run on a few hundred synthetic images."""
    base = {
        "output_dir": str(output_dir),
        "data.dataset": "synthetic",
        "data.max_train_samples": 240,
        "data.max_eval_samples": 120,
        "train.epochs": 1,
        "train.batch_size": 32,
        "train.report_to": "none",
        "eval.batch_size": 64,
        "eval.latency_batch_size": 8,
        "eval.explain": False,
    }
    base.update(extra)
    return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
            for k, v in base.items()]


@pytest.fixture(scope="session")
def tiny_pretrained_dirs(tmp_path_factory):
    """A tiny ViT and a tiny Swin saved with save_pretrained, 1000 labels, as stand-ins for Hub checkpoints."""
    from transformers import (
        SwinConfig,
        SwinForImageClassification,
        ViTConfig,
        ViTForImageClassification,
        ViTImageProcessor,
    )

    root = tmp_path_factory.mktemp("pretrained")
    torch.manual_seed(0)
    id2label = {i: f"imagenet_{i}" for i in range(1000)}
    vit = ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                              num_attention_heads=2, intermediate_size=64, id2label=id2label))
    swin = SwinForImageClassification(SwinConfig(image_size=32, patch_size=2, window_size=4, embed_dim=16,
                                                 depths=[1, 1], num_heads=[1, 2], id2label=id2label))
    dirs = {}
    for name, model in (("vit", vit), ("swin", swin)):
        path = root / name
        model.save_pretrained(path)
        ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(path)
        dirs[name] = path
    return dirs


def randomise_head(model, seed=0):
    """A checkpoint's replaced head starts at zero (hfvision's transfer init), so every input gives zero logits and a
    test comparing logits through the backbone could not fail: such tests randomise the head first."""
    from hfvision.models.module_tree import find_classifier

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in find_classifier(model).parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return model


def free_port() -> int:
    """A TCP port no one listens on now (the kernel's pick), so that torchrun runs on two xdist workers don't meet."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def one_torch_thread():
    """Train or run on one torch thread, as xdist workers and the scripts' subprocesses (OMP_NUM_THREADS=1) do:
    CPU float sums differ with the thread count, so results then match whichever way pytest runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def script_command(name, *args, nproc=None) -> list[str]:
    """``python scripts/NAME args`` (a name without ``.py``: ``python -m hfvision NAME args``), or the same under
    ``torchrun --nproc_per_node nproc`` (CPU processes, gloo)."""
    import sys

    target = [str(REPO / "scripts" / name)] if name.endswith(".py") else ["-m", "hfvision", name]
    if nproc:
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                "--master_port", str(free_port()), *target, *map(str, args)]
    return [sys.executable, *target, *map(str, args)]


def run_cli_in_process(capsys, *argv) -> tuple[int, str, str]:
    """``hfvision ARGV`` in this process: (exit status, stdout, stderr). Tests run the subcommands here (as
    ``scripts/finetune.py`` runs ``hfvision train``) to spare a new interpreter's imports (about 12 s on these
    cores) and keep one subprocess per behaviour that needs a real process. One torch thread, as in the subprocesses."""
    from hfvision.cli import main

    capsys.readouterr()
    status = 0
    with one_torch_thread():
        try:
            main([str(a) for a in argv])
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return status, out, err


def script_env() -> dict:
    import os

    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if a run gets as far as loading data or resolving the model."""
    import hfvision.pipeline as pipeline

    def loaded(*args, **kwargs):
        raise AssertionError("data or model were loaded before the error")
    monkeypatch.setattr(pipeline, "load_raw", loaded)
    monkeypatch.setattr(pipeline, "resolve_input_spec", loaded)
