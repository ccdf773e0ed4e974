"""Probe (python benchmarks/probes/linear_probe_pooling.py cifar10 TRAIN TEST | flowers5): is head-only's ceiling
the backbone's? Independent of hfvision: timm's vit_tiny_patch16_224 from ../shared/models with timm's own eval
transform (bicubic, crop 0.9, mean = std = 0.5), ``forward_features`` -> the CLS token and the mean patch token,
then scikit-learn's StandardScaler + LogisticRegression on CLS, mean and both (C 0.1 and 1).

cifar10: the first TRAIN images of the training split, the first TEST of the test split. flowers5: all 4,317
photos, a seeded 80/20 random split. Results, 2026-12-03 07:58 UTC (cifar10 10000 2000, 218 s of features):
CLS 82.00% test (C 0.1; train 87.7%), mean 80.95%, CLS + mean 82.25% (train 92.4%): the pooling is not the limit.
"""
import io
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import timm
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

SHARED = Path(__file__).resolve().parents[3] / "shared"
torch.set_num_threads(2)
model = timm.create_model("vit_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=dict(
    file=str(SHARED / "models" / "timm-vit_tiny_patch16_224" / "model.safetensors"))).eval()
transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))


def features(images: list) -> np.ndarray:
    """CLS and mean patch token of each image (PIL), side by side: (N, 384)."""
    out = []
    for start in range(0, len(images), 100):
        batch = torch.stack([transform(image.convert("RGB")) for image in images[start:start + 100]])
        with torch.no_grad():
            tokens = model.forward_features(batch)
        out.append(torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], 1).numpy())
    return np.concatenate(out)


def cifar10(train: int, test: int):
    def part(name, count):
        table = pq.read_table(SHARED / "data" / "cifar10" / f"{name}-00000-of-00001.parquet").slice(0, count)
        table = table.to_pydict()
        return features([Image.open(io.BytesIO(cell["bytes"])) for cell in table["img"]]), np.array(table["label"])
    return (*part("train", train), *part("test", test))


def flowers5():
    paths = sorted((SHARED / "data" / "flowers5").glob("*/*.jpg"))
    labels = np.array([sorted({p.parent.name for p in paths}).index(p.parent.name) for p in paths])
    x = features([Image.open(p) for p in paths])
    x_train, x_test, y_train, y_test = train_test_split(x, labels, test_size=0.2, random_state=0)
    return x_train, y_train, x_test, y_test


start = time.time()
x_train, y_train, x_test, y_test = cifar10(int(sys.argv[2]), int(sys.argv[3])) if sys.argv[1] == "cifar10" else flowers5()
print(f"{sys.argv[1]}: features of {len(x_train) + len(x_test)} images in {time.time() - start:.0f} s", flush=True)
for name, columns in (("CLS", slice(0, 192)), ("mean", slice(192, 384)), ("CLS + mean", slice(0, 384))):
    for c in (0.1, 1.0):
        scaler = StandardScaler().fit(x_train[:, columns])
        probe = LogisticRegression(C=c, max_iter=2000).fit(scaler.transform(x_train[:, columns]), y_train)
        print(f"{name:10s} C {c}: train {probe.score(scaler.transform(x_train[:, columns]), y_train):.4f} "
              f"test {probe.score(scaler.transform(x_test[:, columns]), y_test):.4f}", flush=True)
