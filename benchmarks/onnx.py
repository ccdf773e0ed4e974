"""torch eager vs onnxruntime fp32 vs int8 for each ``--onnx`` model: images/s at batch 1 and 64 and accuracy on
``--onnx-data``'s test split (``hfvision.export.export_onnx`` measures; this tabulates): ``onnx_cpu.json``, ``.md``."""

import os
import tempfile
import time
from pathlib import Path

from hfvision.evaluation.compare import markdown_table
from hfvision.export import export_onnx
from hfvision.fileio import write_json_atomic

COLUMNS = ("model", "batch", "torch img/s", "ORT fp32 img/s", "ORT int8 img/s", "torch acc", "fp32 acc", "int8 acc",
           "max logit diff")


def report_rows(model: Path, report: dict) -> list[dict]:
    """One row per batch size of one model's export report; the ratios are to torch's images/s in the row."""
    fp32, int8 = report["fp32"], report["int8"]
    rows = []
    for batch in ("batch_1", "batch_64"):
        a, b = fp32["latency"][batch], int8["latency"][batch]
        cells = [str(model), batch.replace("_", " "), f"{a['torch_images_per_second']:.1f}",
                 f"{a['onnxruntime_images_per_second']:.1f} ({a['onnxruntime_speedup']:.2f}x)",
                 f"{b['onnxruntime_images_per_second']:.1f} "
                 f"({b['onnxruntime_images_per_second'] / a['torch_images_per_second']:.2f}x)",
                 f"{report['torch_reference']['accuracy']:.4f}", f"{fp32['accuracy']:.4f}",
                 f"{int8['accuracy']:.4f}", f"{fp32['max_abs_logit_difference']:.1e}"]
        rows.append(dict(zip(COLUMNS, cells)))
    return rows


def load_text(load: tuple[float, float, float]) -> str:
    return " / ".join(f"{value:.2f}" for value in load)


def run(args, device, env: dict) -> None:
    rows, reports, load_before = [], {}, os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for index, model in enumerate(args.onnx):
            reports[str(model)] = export_onnx(str(model), Path(tmp) / str(index), data=args.onnx_data, split="test",
                                              max_samples=args.onnx_test_images, int8=True)
            rows += report_rows(model, reports[str(model)])
    table, load_after = markdown_table(rows, COLUMNS, str), os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "onnx_cpu.json", {"reports": reports, "environment": env, "argv": args.argv,
                                                   "load_average_1_5_15_min": {"before": load_before,
                                                                               "after": load_after}})
    (args.out / "onnx_cpu.md").write_text(
        f"# torch vs onnxruntime (fp32, int8) on this machine\n\n`python scripts/benchmark.py {' '.join(args.argv)}`, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; accuracy on the first {args.onnx_test_images} "
        f"images of {args.onnx_data}'s test split; the ratios are to torch's images/s in the same row; load average "
        f"(1 / 5 / 15 min) {load_text(load_before)} before, {load_text(load_after)} after\n\n{table}")
    print(table)
