"""Probe (python benchmarks/probes/onnx_spinning.py): batch-1 images/s of the real ViT-Ti/16 at 224 px in torch
eager and in onnxruntime with and without its idle-thread spinning (``session.intra_op.allow_spinning``), in
blocks of 30 calls alternated over 5 rounds in one process. The spinning session is built before its block and
deleted (its threads joined) after it, so it cannot slow the next block. Ratios are to torch in the same round."""
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
