"""Probe (python benchmarks/probes/onnx_spinning.py): batch-1 images/s of the real ViT-Ti/16 at 224 px in torch
eager and in onnxruntime with and without its idle-thread spinning (``session.intra_op.allow_spinning``), in
blocks of 30 calls alternated over 5 rounds in one process. The spinning session is built before its block and
deleted (its threads joined) after it, so it cannot slow the next block. Ratios are to torch in the same round.

Run 2026-12-03 12:36 UTC, twice, on quiet cores (load 0.36; Intel Xeon, torch 2.14.1, onnxruntime 1.32.0): torch
55.6-58.5 img/s; onnxruntime without spinning 56.4-57.9 (median ratio 1.00x and 0.99x), with spinning 70.0-73.0
(1.25x both times). So hfvision's sessions keep onnxruntime's default (spinning) and the export's latency check
opens a session per block (hfvision/export.py: _latency)."""
import gc
import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch

from hfvision.export import _export
from hfvision.models.factory import load_model_for_inference

MODEL = Path(__file__).resolve().parents[3] / "shared" / "models" / "vit-tiny-patch16-224"
torch.set_num_threads(2)
model = load_model_for_inference(str(MODEL)).model.eval()
x = torch.randn(1, 3, 224, 224)
path = Path(tempfile.mkdtemp()) / "model.onnx"
print(_export(model, torch.randn(2, 3, 224, 224), path))


def session(spinning: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def block(run) -> float:
    run(); run()
    times = []
    for _ in range(30):
        start = time.perf_counter(); run(); times.append(time.perf_counter() - start)
    return statistics.median(times)


results = {"torch": [], "ort no spinning": [], "ort spinning": []}
with torch.no_grad():
    for _ in range(5):
        results["torch"].append(block(lambda: model(pixel_values=x)))
        for name, spinning in (("ort no spinning", False), ("ort spinning", True)):
            s = session(spinning)
            results[name].append(block(lambda: s.run(None, {"pixel_values": x.numpy()})))
            del s; gc.collect(); time.sleep(0.5)
for name, times in results.items():
    ratios = [t / o for t, o in zip(results["torch"], times)]
    print(f"{name:16s} img/s {[round(1 / t, 1) for t in times]} median ratio to torch {statistics.median(ratios):.2f}")
