"""Probe (python benchmarks/probes/resize_uint8.py [threads]): resize 32->224 + normalise, batch 128: hfvision's float path (matrix products until 84e54b6, two-tap rows since) vs uint8 interpolate (channels_last) then normalise."""
import time, torch, torch.nn.functional as F, sys
from hfvision.data.transforms import BatchPreprocessor
from hfvision.spec import InputSpec
torch.manual_seed(0)
threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
torch.set_num_threads(threads)
spec = InputSpec(224, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
prep = BatchPreprocessor(spec)
x = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8)
mean = torch.tensor(spec.mean)[None, :, None, None]; std = torch.tensor(spec.std)[None, :, None, None]
scale = (1 / (255 * std)); shift = (-mean / std)
def current():
    return prep.resize_and_normalize(x)
def uint8_path():
    y = F.interpolate(x.contiguous(memory_format=torch.channels_last), size=(224, 224), mode="bilinear", align_corners=False, antialias=False)
    return y.float().mul_(scale).add_(shift)
def uint8_path_contig():
    y = F.interpolate(x.contiguous(memory_format=torch.channels_last), size=(224, 224), mode="bilinear", align_corners=False, antialias=False)
    return y.contiguous().float().mul_(scale).add_(shift)
a, b = current(), uint8_path()
print("max abs diff (normalised units)", (a - b).abs().max().item(), "~ 1/255/std =", (1/255/0.2435))
fns = {"current": current, "uint8": uint8_path, "uint8_contig": uint8_path_contig}
res = {k: [] for k in fns}
for r in range(5):
    for k, f in fns.items():
        t = time.perf_counter(); [f() for _ in range(3)]; res[k].append(3 * 128 / (time.perf_counter() - t))
for k, v in res.items(): v.sort(); print(k, threads, "threads:", round(v[2]), "img/s")
