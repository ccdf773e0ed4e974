"""Probe (python benchmarks/probes/resize_two_tap.py [threads]): the 224 px training preprocessing of the input-pipeline
benchmark (crop pad 4 + flip at 32 px, normalise, bilinear resize to 224, batch 128), with the rows resized by one
matrix product (before) and by the two-tap phase lerps of `_upscale_rows` (now), alternated in one process; and the
allocate-and-fill floor. Prints milliseconds per batch and images/s, medians of 7 rounds (probe, not a benchmark)."""
import statistics, sys, time

import torch

from hfvision.data import transforms
from hfvision.data.transforms import BatchPreprocessor, _resize_matrix
from hfvision.recipe import AugmentRecipe
from hfvision.spec import InputSpec

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
B, S = 128, 224
images = torch.randint(0, 256, (B, 3, 32, 32), dtype=torch.uint8)
labels = torch.zeros(B, dtype=torch.long)
pre = BatchPreprocessor(InputSpec(S, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)), AugmentRecipe(random_crop_padding=4, horizontal_flip=True))
two_tap = transforms.resize_bilinear


def matrix_products(x, size):
    rows = _resize_matrix(x.shape[-2], size, x.device)
    cols = _resize_matrix(x.shape[-1], size, x.device)
    return rows @ x @ cols.T


def run(resize):
    def step():
        transforms.resize_bilinear = resize
        pre(images, labels, train=True, generator=torch.Generator().manual_seed(0))
    return step


x = torch.randn(4, 3, 32, 32)
print("max |two-tap - matrix products|:", (two_tap(x, S) - matrix_products(x, S)).abs().max().item())
fns = {"matrix products (before)": run(matrix_products), "two-tap (now)": run(two_tap),
       "floor: allocate and fill": lambda: torch.empty(B, 3, S, S).fill_(0)}
res = {k: [] for k in fns}
for _ in range(7):
    for k, f in fns.items():
        start = time.perf_counter()
        for _ in range(4):
            f()
        res[k].append((time.perf_counter() - start) / 4)
for k, v in res.items():
    print(f"{k:28s} {1000 * statistics.median(v):6.1f} ms/batch {B / statistics.median(v):7,.0f} img/s")
