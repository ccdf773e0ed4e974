"""Probe (python benchmarks/probes/fused_resize.py): 32->224 bilinear resize of a 128-image float batch, alternated in one process: the matrix-product resize (hfvision's until 84e54b6), the two-tap gather form eager and under torch.compile (inductor fuses it into one loop), and the allocate-and-fill floor (probe, not a benchmark)."""
import time, torch, torch.nn.functional as F
from hfvision.data.transforms import _resize_matrix
torch.set_num_threads(2)
B, S = 128, 224
x = torch.randn(B, 3, 32, 32)
def taps(n_in, n_out):
    src = ((torch.arange(n_out) + 0.5) * n_in / n_out - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=n_in - 1); i1 = (i0 + 1).clamp(max=n_in - 1); w1 = src - i0; w0 = 1 - w1
    return i0, i1, w0, w1
i0, i1, w0, w1 = taps(32, S)
def two_tap(x):
    rows = x[:, :, i0, :] * w0[:, None] + x[:, :, i1, :] * w1[:, None]          # (B,3,S,32)
    return rows[..., i0] * w0 + rows[..., i1] * w1                                 # (B,3,S,S)
ref = F.interpolate(x, size=(S, S), mode="bilinear", align_corners=False)
print("eager two-tap max diff", (two_tap(x) - ref).abs().max().item())
t = time.perf_counter(); compiled = torch.compile(two_tap); y = compiled(x); print("compile s", round(time.perf_counter() - t, 1), "diff", (y - ref).abs().max().item())
r = _resize_matrix(32, S, torch.device("cpu"))  # resize_bilinear before 84e54b6: two matrix products
fns = {"matmul (before 84e54b6)": lambda: r @ x @ r.T, "two-tap eager": lambda: two_tap(x), "two-tap inductor": lambda: compiled(x),
       "fill floor": lambda: torch.empty(B, 3, S, S).fill_(0)}
res = {k: [] for k in fns}
for _ in range(5):
    for k, f in fns.items():
        t = time.perf_counter(); [f() for _ in range(4)]; res[k].append(4 * B / (time.perf_counter() - t))
for k, v in res.items(): v.sort(); print(k, round(v[2]), "img/s")
