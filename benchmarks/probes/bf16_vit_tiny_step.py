"""Probe (python benchmarks/probes/bf16_vit_tiny_step.py [--model DIR]): full fine-tuning train-step images/s of the
real ViT-Ti/16 (../shared/models/vit-tiny-patch16-224) at 112 and 224 px, fp32 against bf16 autocast
(``train.mixed_precision: bf16``), alternated in one process, batch 64, median of 5 rounds of 3 steps. On a CPU with
AMX or AVX-512 BF16 the matmuls run in bf16; elsewhere bf16 can be slower than fp32."""
import argparse
import statistics
import time

import torch
from transformers import ViTForImageClassification

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="../shared/models/vit-tiny-patch16-224")
args = parser.parse_args()
torch.manual_seed(0)
model = ViTForImageClassification.from_pretrained(args.model, num_labels=10, ignore_mismatched_sizes=True)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)


def rate(size: int, bf16: bool, batch: int = 64, steps: int = 3) -> float:
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    start = time.perf_counter()
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(pixel_values=x, labels=y, interpolate_pos_encoding=True).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return steps * batch / (time.perf_counter() - start)


for size in (112, 224):
    rate(size, False, steps=1), rate(size, True, steps=1)  # warm-up
    rates = {False: [], True: []}
    for _ in range(5):
        for bf16 in (False, True):
            rates[bf16].append(rate(size, bf16))
    fp32, bf16 = statistics.median(rates[False]), statistics.median(rates[True])
    print(f"{size} px: fp32 {fp32:.1f} img/s, bf16 {bf16:.1f} img/s, {bf16 / fp32:.2f}x")
