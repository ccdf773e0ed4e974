"""Probe (python benchmarks/probes/onnx_ort_fusions.py THREADS): does fusing attention help onnxruntime at batch 1?
The real ViT-Ti/16 exported as ``hfvision export`` does (the TorchScript exporter) and with the dynamo exporter
followed by onnxscript's ``optimize_for_ort`` (which fuses 12 Attention, 24 SkipLayerNormalization and 12 BiasGelu
nodes: about 110 nodes instead of about 600), then torch eager and both graphs at batch 1, blocks of 10 calls alternated
over 5 rounds in one process; the median per-round ratio to torch. 2026-12-03 08:20 UTC, 1 thread, beside a
training job (niced), two runs: torch 35-36 img/s, unfused 1.30x and 1.23x, fused 1.10x and 1.08x (max |logit
difference| 1.0e-5): the fused graph is slower, so ``hfvision export`` keeps the unfused one."""
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch
from onnxscript.rewriter.ort_fusions import optimize_for_ort

from hfvision.export import _export
from hfvision.models.factory import load_model_for_inference
from hfvision.models.outputs import LogitsOnly

MODEL = Path(__file__).resolve().parents[3] / "shared" / "models" / "vit-tiny-patch16-224"
threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
torch.set_num_threads(threads)
model = load_model_for_inference(str(MODEL)).model.eval()
out = Path(tempfile.mkdtemp())
_export(model, torch.randn(2, 3, 224, 224), out / "plain.onnx")
program = torch.onnx.export(LogitsOnly(model).eval(), (torch.randn(2, 3, 224, 224),), dynamo=True, opset_version=18,
                            input_names=["pixel_values"], output_names=["logits"],
                            dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch", min=1, max=4096)}})
program.optimize()
optimize_for_ort(program.model)
print(collections.Counter(node.op_type for node in program.model.graph).most_common(6))
program.save(str(out / "fused.onnx"))


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


plain, fused = session(out / "plain.onnx"), session(out / "fused.onnx")
x = torch.randn(1, 3, 224, 224)
with torch.no_grad():
    reference = model(pixel_values=x).logits.numpy()
print("max |logit difference| fused", abs(fused.run(None, {"pixel_values": x.numpy()})[0] - reference).max())
runs = {"torch": lambda: model(pixel_values=x), "ort": lambda: plain.run(None, {"pixel_values": x.numpy()}),
        "ort fused": lambda: fused.run(None, {"pixel_values": x.numpy()})}
times = {name: [] for name in runs}
with torch.no_grad():
    for _ in range(5):
        for name, run in runs.items():
            run()
            block = []
            for _ in range(10):
                start = time.perf_counter(); run(); block.append(time.perf_counter() - start)
            times[name].append(statistics.median(block))
for name, block in times.items():
    ratio = statistics.median(t / b for t, b in zip(times["torch"], block))
    print(f"{name:10s} img/s {[round(1 / t, 1) for t in block]} ratio to torch {ratio:.2f}")
