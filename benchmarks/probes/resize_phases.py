"""Probe (python benchmarks/probes/resize_phases.py): milliseconds per 128-image batch of the two matrix products of the 32->224 resize written into preallocated outputs, the column-first order, and a fill of warm memory (probe, not a benchmark)."""
import time, torch
from hfvision.data.transforms import _resize_matrix
torch.set_num_threads(2)
B=128
x = torch.randn(B,3,32,32)
r = _resize_matrix(32,224,torch.device('cpu')); c = r.T.contiguous()
b1 = torch.empty(B,3,224,32); b2 = torch.empty(B,3,224,224); b3=torch.empty(B,3,32,224)
def step1(): torch.matmul(r, x, out=b1)
def step2(): torch.matmul(b1, c, out=b2)
def step2_flat(): torch.mm(b1.view(-1,32), c, out=b2.view(-1,224))
def colsfirst1(): torch.mm(x.view(-1,32), c, out=b3.view(-1,224))
def colsfirst2(): torch.matmul(r, b3, out=b2)
def fill(): b2.fill_(1.0)
def fresh_empty(): torch.empty(B,3,224,224)
tests=dict(step1=step1, step2=step2, step2_flat=step2_flat, colsfirst1=colsfirst1, colsfirst2=colsfirst2, fill=fill)
res={k:[] for k in tests}
for _ in range(5):
  for k,f in tests.items():
    t=time.perf_counter(); [f() for _ in range(5)]; res[k].append((time.perf_counter()-t)/5*1000)
for k,v in res.items(): v.sort(); print(k, round(v[2],2), "ms/batch")
