"""Probe: 8 train steps of the benchmark ViT (patch 4, width 192, depth 6), batch 128, printing images/s. Compare environments with farm-bench, e.g. THP_MEM_ALLOC_ENABLE=1 vs 0: farm-bench -n 4 --vs "sh -c 'THP_MEM_ALLOC_ENABLE=0 exec python benchmarks/probes/thp_step.py >>/tmp/B'" -- sh -c 'THP_MEM_ALLOC_ENABLE=1 exec python benchmarks/probes/thp_step.py >>/tmp/A' (probe, not a benchmark)."""
import time, torch, sys
from transformers import ViTConfig, ViTForImageClassification
torch.manual_seed(0); torch.set_num_threads(2)
m = ViTForImageClassification(ViTConfig(image_size=32, patch_size=4, hidden_size=192, num_hidden_layers=6, num_attention_heads=3, intermediate_size=768, num_labels=10))
o = torch.optim.AdamW(m.parameters(), 1e-3)
x=torch.randn(128,3,32,32); y=torch.randint(0,10,(128,))
def step():
    loss=torch.nn.functional.cross_entropy(m(pixel_values=x).logits,y); loss.backward(); o.step(); o.zero_grad()
step(); step()
t=time.perf_counter()
for _ in range(8): step()
print(8*128/(time.perf_counter()-t))
