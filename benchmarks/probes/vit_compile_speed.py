"""Probe (python benchmarks/probes/vit_compile_speed.py): train-step images/s of the CPU-budget ScratchViT shape,
eager vs torch.compile (default inductor), alternated in one process, median of 6 rounds."""
import time, torch
from hfvision.models.scratch_vit import ScratchViTConfig, ScratchViTForImageClassification
torch.manual_seed(0)
cfg=dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256, pooling="mean")
def make():
    m = ScratchViTForImageClassification(ScratchViTConfig(image_size=32, patch_size=4, num_labels=10, **cfg)); return m
eager = make(); comp = make(); comp.load_state_dict(eager.state_dict())
opt_e = torch.optim.AdamW(eager.parameters(), 1e-3); opt_c = torch.optim.AdamW(comp.parameters(), 1e-3)
cf = torch.compile(comp)
def step(m,o,b=128):
    x=torch.randn(b,3,32,32); y=torch.randint(0,10,(b,))
    t=time.perf_counter(); loss=torch.nn.functional.cross_entropy(m(pixel_values=x).logits,y); loss.backward(); o.step(); o.zero_grad(); return b/(time.perf_counter()-t)
t=time.perf_counter(); step(cf,opt_c); step(cf,opt_c); print("compile warmup s", time.perf_counter()-t, flush=True)
step(eager,opt_e)
r={"eager":[], "compiled":[]}
for i in range(6):
    r["eager"].append(sum(step(eager,opt_e) for _ in range(3))/3)
    r["compiled"].append(sum(step(cf,opt_c) for _ in range(3))/3)
for k,v in r.items(): v.sort(); print(k, round(v[3]))
