"""Probe (python benchmarks/probes/vit_step_speed.py): train-step images/s of candidate ScratchViT shapes, alternated in one process (probe, not a benchmark)."""
import sys, time, torch
from hfvision.models.scratch_vit import ScratchViTConfig, ScratchViTForImageClassification
torch.manual_seed(0)
shapes = {
 "lin_w128d4_b128": (dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256, pooling="mean"), 128),
 "conv_w128d4_b128": (dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256, pooling="mean", patch_embedding="conv"), 128),
 "conv_w128d4_b256": (dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256, pooling="mean", patch_embedding="conv"), 256),
 "conv_w192d4_b128": (dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=3, intermediate_size=384, pooling="mean", patch_embedding="conv"), 128),
 "conv_w128d6_b128": (dict(hidden_size=128, num_hidden_layers=6, num_attention_heads=4, intermediate_size=256, pooling="mean", patch_embedding="conv"), 128),
}
models = {}
for k,(cfg,b) in shapes.items():
    m = ScratchViTForImageClassification(ScratchViTConfig(image_size=32, patch_size=4, num_labels=10, **cfg))
    models[k] = (m, torch.optim.AdamW(m.parameters(), 1e-3), b)
res = {k: [] for k in shapes}
def step(k):
    m,o,b = models[k]; x=torch.randn(b,3,32,32); y=torch.randint(0,10,(b,))
    t=time.perf_counter(); loss=torch.nn.functional.cross_entropy(m(x).logits,y); loss.backward(); o.step(); o.zero_grad(); return b/(time.perf_counter()-t)
for k in shapes: step(k); step(k)
for r in range(6):
    for k in shapes:
        res[k].append(sum(step(k) for _ in range(3))/3)
for k,v in res.items():
    v.sort(); print(f"{k}: median {v[len(v)//2]:.0f} img/s  params {sum(p.numel() for p in models[k][0].parameters()):,}")
