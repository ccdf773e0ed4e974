"""Probe (python benchmarks/probes/resnet_step_speed.py): train-step images/s of the CIFAR ResNet-18 on CPU,
contiguous (NCHW) vs channels-last memory format, and batch 128 vs 64, alternated in one process, median of 5 rounds."""
import time, torch
from hfvision.models.resnet_cifar import ResNetCifarConfig, ResNetCifarForImageClassification
torch.manual_seed(0)
def make(channels_last):
    m = ResNetCifarForImageClassification(ResNetCifarConfig(num_labels=10))
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    return m, torch.optim.SGD(m.parameters(), 0.05, momentum=0.9)
def step(m, o, channels_last, b):
    x = torch.randn(b, 3, 32, 32); y = torch.randint(0, 10, (b,))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    t = time.perf_counter()
    torch.nn.functional.cross_entropy(m(pixel_values=x).logits, y).backward(); o.step(); o.zero_grad()
    return b / (time.perf_counter() - t)
arms = {"nchw b128": (make(False), False, 128), "channels_last b128": (make(True), True, 128),
        "nchw b64": (make(False), False, 64)}
for (m, o), cl, b in arms.values():
    step(m, o, cl, b)
rates = {k: [] for k in arms}
for _ in range(5):
    for k, ((m, o), cl, b) in arms.items():
        rates[k].append(sum(step(m, o, cl, b) for _ in range(2)) / 2)
for k, v in rates.items():
    v.sort(); print(f"{k}: {v[2]:.1f} img/s")
