"""Probe (python benchmarks/probes/resize_variants.py): 32->224 bilinear resize of a 128-image float batch, alternated: the matrix-product resize, F.interpolate (NCHW and channels-last), rows by matrix then F.interpolate, and nearest (probe, not a benchmark)."""
import time, torch, torch.nn.functional as F
from hfvision.data.transforms import _resize_matrix
torch.set_num_threads(2)
B=128
x = torch.randn(B,3,32,32)
r = _resize_matrix(32,224,torch.device('cpu'))
def mm(): return r @ x @ r.T  # resize_bilinear before 84e54b6 (two matrix products)
def interp(): return F.interpolate(x,size=(224,224),mode='bilinear',align_corners=False)
def interp_cl(): return F.interpolate(x.contiguous(memory_format=torch.channels_last),size=(224,224),mode='bilinear',align_corners=False)
def rows_then_interp(): return F.interpolate(r @ x,size=(224,224),mode='bilinear',align_corners=False)
def nearest_like(): return F.interpolate(x,size=(224,224),mode='nearest')
ref = interp()
for k,f in dict(mm=mm, rows_then_interp=rows_then_interp, interp_cl=interp_cl).items(): print(k, (f()-ref).abs().max().item())
tests=dict(mm=mm, interp=interp, interp_cl=interp_cl, rows_then_interp=rows_then_interp, nearest=nearest_like)
res={k:[] for k in tests}
for _ in range(5):
  for k,f in tests.items():
    t=time.perf_counter(); [f() for _ in range(4)]; res[k].append((time.perf_counter()-t)/4*1000)
for k,v in res.items(): v.sort(); print(k, round(v[2],1), "ms/batch", round(B/v[2]*1000), "img/s")
