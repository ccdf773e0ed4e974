"""Probe (python benchmarks/probes/vit_tiny_bf16_resolution_step.py): full fine-tuning train-step images/s of the
real ViT-Ti/16 under bf16 autocast at 160, 192, 224 and again 160 px, batch 128, 2 steps each, one process.
2026-12-02 17:31 UTC, 2 quiet cores: 39.1, 21.0, 15.3, 35.9 images/s."""
import time, torch
from transformers import ViTForImageClassification
torch.manual_seed(0)
m = ViTForImageClassification.from_pretrained("../shared/models/vit-tiny-patch16-224", num_labels=10, ignore_mismatched_sizes=True)
o = torch.optim.AdamW(m.parameters(), lr=1e-4)
def rate(size, b=128, steps=2):
    x, y = torch.randn(b, 3, size, size), torch.randint(0, 10, (b,))
    s = time.perf_counter()
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = m(pixel_values=x, labels=y, interpolate_pos_encoding=True).loss
        loss.backward(); o.step(); o.zero_grad()
    return steps * b / (time.perf_counter() - s)
rate(160, steps=1)
for size in (160, 192, 224, 160):
    print(size, f"{rate(size):.1f} img/s", flush=True)
