"""Model cost: parameters, FLOPs/MACs per image (torch's FLOP counter), inference latency.

FLOPs count one multiply-add as two FLOPs, as ``torch.utils.flop_counter`` does; MACs = FLOPs / 2.
Both are per image, at the model's input size, and include attention: torch counts SDPA's CUDA kernels, and
from 2.15 its CPU kernel; before 2.15 ``_scaled_dot_product_flash_attention_for_cpu`` was missing from the
counter's table and counted as zero, so we map it to torch's own SDPA formula (QK^T plus AV). The mapping is a
dict key, so on a torch that has the entry it replaces it with the same formula: one count per attention call.
Latency is measured on a fixed-size batch after warm-up, with device synchronisation around the timer.
"""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from hfvision.models.outputs import logits_of
from hfvision.models.module_tree import count_parameters


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# the CPU SDPA kernel that torch < 2.15 leaves out of FlopCounterMode's table (the other kernels are in it)
SDPA_FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter, silent, with SDPA's CPU kernel counted on every torch version."""
    return FlopCounterMode(display=False, custom_mapping=SDPA_FLOP_FORMULAS)


@torch.no_grad()
def flops_per_image(model: nn.Module, image_size: int, num_channels: int = 3) -> int:
    """Forward FLOPs for one image (batch of 1) at ``image_size``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pixel_values = torch.zeros(1, num_channels, image_size, image_size, device=device)
    counter = flop_counter()
    with counter:
        logits_of(model, pixel_values)
    model.train(was_training)
    return int(counter.get_total_flops())


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def inference_latency(model: nn.Module, image_size: int, batch_size: int, *, warmup: int = 3, iterations: int = 10,
                      dtype: torch.dtype | None = None, num_channels: int = 3) -> dict:
    """Median milliseconds per batch and images/second, after ``warmup`` untimed batches."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pixel_values = torch.randn(batch_size, num_channels, image_size, image_size, device=device)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else torch.autocast(device.type, enabled=False)
    timings = []
    with autocast:
        for step in range(warmup + iterations):
            _synchronize(device)
            start = time.perf_counter()
            logits_of(model, pixel_values)
            _synchronize(device)
            if step >= warmup:
                timings.append(time.perf_counter() - start)
    model.train(was_training)
    ms = sorted(timings)[len(timings) // 2] * 1000
    return {"inference_ms_per_batch": ms, "images_per_second": batch_size / (ms / 1000),
            "latency_batch_size": batch_size, "precision": str(dtype).replace("torch.", "") if dtype else "float32",
            "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device)}


def model_profile(model: nn.Module, image_size: int) -> dict:
    total, trainable = count_parameters(model)
    flops = flops_per_image(model, image_size)
    return {"parameters": total, "trainable_parameters": trainable, "flops_per_image": flops,
            "macs_per_image": flops // 2, "image_size": image_size}
