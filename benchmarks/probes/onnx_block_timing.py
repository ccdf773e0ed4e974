"""Probe (python benchmarks/probes/onnx_block_timing.py MODEL.onnx | --dynamo-export OUT.onnx): torch eager
against onnxruntime fp32 for the real ViT-Ti/16 at batch 1, blocks of 30 calls alternated over 5 rounds in one
process; the median of the per-round ratios. With --dynamo-export, it first writes the model as
torch.onnx.export(dynamo=True) exports it and times that file. 2026-12-02 17:38 UTC, quiet cores: 1.21x for
`hfvision export`'s graph (rounds 1.09-1.44), 1.22x for the dynamo export."""
import statistics
import sys
import time

import onnxruntime as ort
import torch
from transformers import ViTForImageClassification

if "--dynamo-export" in sys.argv:
    out = sys.argv[sys.argv.index("--dynamo-export") + 1]
    model = ViTForImageClassification.from_pretrained("../shared/models/vit-tiny-patch16-224").eval()

    class Logits(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            return self.model(pixel_values=pixel_values).logits

    torch.onnx.export(Logits(model).eval(), (torch.randn(1, 3, 224, 224),), out, dynamo=True, opset_version=18,
                      input_names=["pixel_values"], output_names=["logits"],
                      dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch")}})
    sys.argv[1] = out

m = ViTForImageClassification.from_pretrained("../shared/models/vit-tiny-patch16-224").eval()
path = sys.argv[1]
s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
x = torch.randn(1, 3, 224, 224); xn = x.numpy(); name = s.get_inputs()[0].name
runs = {"torch": lambda: m(pixel_values=x), "ort": lambda: s.run(None, {name: xn})}
times = {k: [] for k in runs}
with torch.no_grad():
    for _ in range(5):
        for k, r in runs.items():
            r(); r()
            block = []
            for _ in range(30):
                t = time.perf_counter(); r(); block.append(time.perf_counter() - t)
            times[k].append(statistics.median(block))
ratios = [a / b for a, b in zip(times["torch"], times["ort"])]
print(path, "torch", [round(1/t,1) for t in times["torch"]], "ort", [round(1/t,1) for t in times["ort"]], "ratios", [round(r,2) for r in ratios], "median", round(statistics.median(ratios),2))
