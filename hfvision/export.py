"""ONNX export of a trained classifier, validated against torch on real images, and the ONNX model as a
predictor (``hfvision predict --model EXPORT_DIR``).

The export dir is self-describing: ``model.onnx`` (input ``pixel_values`` float (B, 3, S, S), output ``logits``
(B, num_labels), a dynamic batch axis, opset ``OPSET``), ``config.json`` (the model's config, with ``id2label``),
the image processor config, and ``export.json`` (what was checked: max |logit difference| and top-1 agreement
with torch on real images, latency of both at batch 1 and 64 on this machine, and with ``--int8`` the same for
onnxruntime's dynamically quantised copy ``model.int8.onnx`` (``quantize_int8``: which nodes stay fp32), with test
accuracy when the images have labels).

The exporter is torch's TorchScript-based ``torch.onnx.export(dynamo=False)``, which exports every family here
(transformers ViT/DeiT and Swin, timm ViTs, ScratchViT with RoPE, registers, QK-norm, SwiGLU, RMSNorm and conv
stems, the CIFAR ResNet); torch's dynamo exporter is tried when it is not available. A model that neither can
export gets one line naming its class and the operation.
"""

from __future__ import annotations

import gc
import json
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from hfvision.data.images import UnreadableImage, image_files, load_pixels
from hfvision.data.sources import load_eval_split, load_run_split
from hfvision.data.transforms import BatchPreprocessor
from hfvision.errors import HfvisionError
from hfvision.fileio import write_json_atomic
from hfvision.models.factory import BuiltModel, load_model_for_inference, processor_spec
from hfvision.models.outputs import LogitsOnly

OPSET = 18
ONNX_FILE, INT8_FILE, REPORT_FILE = "model.onnx", "model.int8.onnx", "export.json"
LATENCY_BATCHES = (1, 64)


def is_onnx_dir(path: str | Path) -> bool:
    return (Path(path) / ONNX_FILE).is_file()


class OnnxClassifier:
    """An exported dir as a classifier: ``model(pixel_values=x).logits`` like a transformers model, through
    onnxruntime (no torch model is built). ``config`` is the saved config (labels)."""

    class Output:
        def __init__(self, logits: torch.Tensor):
            self.logits = logits

    def __init__(self, path: str | Path, file: str = ONNX_FILE):
        import onnxruntime
        from transformers import AutoConfig

        self.config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        options = onnxruntime.SessionOptions()
        # as many threads as torch's (OMP_NUM_THREADS, one per process under torchrun), not one per core in each of
        # several processes; idle threads spin a while between runs (onnxruntime's default), worth 1.25x at batch 1
        # on the real ViT-Ti (benchmarks/probes/onnx_spinning.py); while spinning they take the cores from torch
        # beside them, so the latency check opens a session per timed block and closes it after
        options.intra_op_num_threads = torch.get_num_threads()
        self.session = onnxruntime.InferenceSession(str(Path(path) / file), options,
                                                    providers=["CPUExecutionProvider"])

    def __call__(self, pixel_values: torch.Tensor) -> "OnnxClassifier.Output":
        array = pixel_values.detach().cpu().float().numpy()
        return self.Output(torch.from_numpy(self.session.run(["logits"], {"pixel_values": array})[0]))


def load_onnx_for_inference(path: str | Path, file: str = ONNX_FILE) -> BuiltModel:
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(path, trust_remote_code=False)
    return BuiltModel(OnnxClassifier(path, file), processor, processor_spec(processor))


def _export(model: torch.nn.Module, example: torch.Tensor, path: Path) -> str:
    """Write ``path``; return the exporter used. One line naming the model and the operation if none can."""
    wrapper, errors = LogitsOnly(model).eval(), []
    for dynamo in (False, True):
        options = dict(input_names=["pixel_values"], output_names=["logits"], opset_version=OPSET, dynamo=dynamo)
        if dynamo:
            options["dynamic_shapes"] = {"pixel_values": {0: torch.export.Dim("batch", min=1, max=4096)}}
        else:
            options["dynamic_axes"] = {"pixel_values": {0: "batch"}, "logits": {0: "batch"}}
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(wrapper, (example,), str(path), **options)
            return "torch.onnx.export(dynamo=True)" if dynamo else "torch.onnx.export(dynamo=False)"
        except Exception as exc:  # noqa: BLE001 -- reported below in one line
            errors.append(str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__)
    raise HfvisionError(f"export: {type(model).__name__} cannot be exported to ONNX: {errors[0]}")


def _validation_images(built: BuiltModel, model: str, images: list[str] | None, data: str | None, split: str,
                       max_samples: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 images (N, 3, S, S) and their labels (None for plain files) to validate on."""
    if images:
        pixels = []
        for path in image_files(images, "--images")[:max_samples]:
            try:
                pixels.append(load_pixels(path, built.spec.decode_size, str(path), built.spec.crop_pct))
            except UnreadableImage:
                continue
        if not pixels:
            raise HfvisionError(f"--images: no readable image among {', '.join(images)}")
        return torch.cat(pixels), None
    if data:
        split_data, names = load_eval_split(data, split, built.spec.decode_size, max_samples, on_bad_image="skip",
                                             crop_pct=built.spec.crop_pct)
    else:  # a run dir: the split of the data it was trained on, as it carved it
        split_data, names = load_run_split(model, split, built.spec.decode_size, max_samples,
                                           crop_pct=built.spec.crop_pct, what="export")
    model_names = [built.model.config.id2label[i] for i in range(built.model.config.num_labels)]
    return split_data.pixels[:], split_data.labels if names == model_names else None


# (rounds, calls a block) for each of LATENCY_BATCHES: each runtime runs a block of calls alone, then the other
LATENCY_ROUNDS = {1: (5, 10), 64: (3, 2)}


def _latency(torch_model, open_onnx: Callable[[], OnnxClassifier], image_size: int) -> dict:
    """Seconds per batch of torch eager and onnxruntime, in blocks alternated round by round (A B A B, a warm-up
    call before each block), so that a change in the machine's load falls on both. Each onnxruntime block runs on
    a session ``open_onnx()`` opens for it and closed after it, so that its thread pool, still spinning after its
    last call, cannot slow torch's next block (calling the two alternately call by call made both slower). Per
    runtime the median over rounds of each block's median; the speedup is the median of the per-round ratios."""
    out = {}
    for batch in LATENCY_BATCHES:
        x = torch.randn(batch, 3, image_size, image_size)
        runtimes = {"torch": lambda: torch_model, "onnxruntime": open_onnx}
        rounds, calls = LATENCY_ROUNDS[batch]
        blocks = {name: [] for name in runtimes}
        with torch.no_grad():
            for _ in range(rounds):
                for name, open_runtime in runtimes.items():
                    model = open_runtime()
                    model(pixel_values=x)  # warm-up: caches and the thread pool, after the other runtime's block
                    times = []
                    for _ in range(calls):
                        start = time.perf_counter()
                        model(pixel_values=x)
                        times.append(time.perf_counter() - start)
                    blocks[name].append(statistics.median(times))
                    del model  # an onnxruntime session's threads are joined here
                    gc.collect()
        torch_s, onnx_s = statistics.median(blocks["torch"]), statistics.median(blocks["onnxruntime"])
        out[f"batch_{batch}"] = {"torch_ms": 1000 * torch_s, "onnxruntime_ms": 1000 * onnx_s,
                                 "torch_images_per_second": batch / torch_s,
                                 "onnxruntime_images_per_second": batch / onnx_s,
                                 "onnxruntime_speedup": statistics.median(
                                     t / o for t, o in zip(blocks["torch"], blocks["onnxruntime"])),
                                 "rounds": rounds, "calls_per_block": calls}
    return out


@torch.no_grad()
def _logits_in_batches(model, inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model(pixel_values=inputs[i:i + batch_size]).logits for i in range(0, len(inputs), batch_size)])


def _compare(reference: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor | None) -> dict:
    block = {"max_abs_logit_difference": float((reference - logits).abs().max()),
             "top1_agreement": float((reference.argmax(-1) == logits.argmax(-1)).float().mean())}
    if labels is not None:
        block["accuracy"] = float((logits.argmax(-1) == labels).float().mean())
    return block


# the elementwise ops an MLP's activation is built of in an opset-18 graph (GELU as Erf, its tanh form, SiLU)
ACTIVATION_OPS = {"Erf", "Tanh", "Sigmoid", "Gelu", "FastGelu", "BiasGelu", "QuickGelu"}
ELEMENTWISE_OPS = ACTIVATION_OPS | {"Add", "Sub", "Mul", "Div", "Pow", "Cast", "Identity"}
HEAD_PATH_OPS = {"Add", "Reshape", "Flatten", "Squeeze", "Identity"}


def _producers(graph) -> dict:
    return {name: node for node in graph.node for name in node.output}


def activation_fed_matmuls(graph, depth: int = 5) -> list[str]:
    """MatMuls whose input is an MLP activation's output (within ``depth`` elementwise ops: GELU, SiLU, SwiGLU)."""
    producers = _producers(graph)

    def after_activation(tensor: str, steps: int) -> bool:
        node = producers.get(tensor)
        if node is None or steps == 0 or node.op_type not in ELEMENTWISE_OPS:
            return False
        return node.op_type in ACTIVATION_OPS or any(after_activation(name, steps - 1) for name in node.input)

    return [node.name for node in graph.node if node.op_type == "MatMul" and after_activation(node.input[0], depth)]


def head_matmuls(graph) -> list[str]:
    """The MatMul/Gemm nodes nearest the ``logits`` output, through bias adds and reshapes: the classifier."""
    producers, found, frontier = _producers(graph), [], ["logits"]
    while frontier:
        node = producers.get(frontier.pop())
        if node is None:
            continue
        if node.op_type in ("MatMul", "Gemm"):
            found.append(node.name)
        elif node.op_type in HEAD_PATH_OPS:
            frontier += list(node.input)
    return found


def quantize_int8(source: Path, target: Path) -> list[str]:
    """onnxruntime's dynamic int8 quantisation of ``source`` into ``target``; returns the nodes kept in fp32.

    Only weight MatMuls are quantised, per output channel (the patch embedding's Conv stays fp32). Kept in fp32 too:
    the classifier head and the MatMuls fed by an MLP activation (GELU's output is long-tailed, and one scale per
    tensor for a whole batch left too few levels for it: on the real ViT-Ti, CIFAR-10, quantising every MLP's
    second linear cost 5.7 points of accuracy, keeping them fp32 0.2)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(source), load_external_data=False).graph
    kept = activation_fed_matmuls(graph) + head_matmuls(graph)
    # the quantiser first rewrites each Gemm as a MatMul named NAME_MatMul (and an Add), then applies the exclusions
    excluded = kept + [f"{node.name}_MatMul" for node in graph.node if node.name in kept and node.op_type == "Gemm"]
    quantize_dynamic(str(source), str(target), op_types_to_quantize=["MatMul"], per_channel=True,
                     weight_type=QuantType.QInt8, nodes_to_exclude=excluded)
    return kept


def export_onnx(model: str, out: str | Path, *, images: list[str] | None = None, data: str | None = None,
                split: str = "test", max_samples: int = 256, int8: bool = False, batch_size: int = 64) -> dict:
    """Export ``model`` (run dir, model dir or Hub id) to ``out`` and validate it; returns ``export.json``."""
    if not images and not data and not (Path(model) / "recipe.yaml").is_file():
        raise HfvisionError("export: give --images FILES_OR_FOLDERS or --data SOURCE to validate the export on "
                            "(a run dir's own held-out split is the default)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    built = load_model_for_inference(model)
    pixels, labels = _validation_images(built, model, images, data, split, max_samples)
    inputs = BatchPreprocessor(built.spec).resize_and_normalize(pixels)
    exporter = _export(built.model, inputs[:2], out / ONNX_FILE)
    built.model.config.save_pretrained(out)
    built.image_processor.save_pretrained(out)
    reference = _logits_in_batches(built.model, inputs, batch_size)
    onnx_logits = _logits_in_batches(OnnxClassifier(out), inputs, batch_size)  # closed before the timing
    report = {"model": model, "opset": OPSET, "exporter": exporter, "validated_on": len(inputs),
              "validation_source": data or ("files" if images else f"{model} (its {split} split)"), "torch_reference": {"accuracy": float(
                  (reference.argmax(-1) == labels).float().mean())} if labels is not None else {},
              "fp32": {**_compare(reference, onnx_logits, labels),
                       "latency": _latency(built.model, lambda: OnnxClassifier(out), built.spec.image_size)}}
    if int8:
        kept_fp32 = quantize_int8(out / ONNX_FILE, out / INT8_FILE)
        int8_logits = _logits_in_batches(OnnxClassifier(out, INT8_FILE), inputs, batch_size)
        report["int8"] = {**_compare(onnx_logits, int8_logits, labels), "kept_fp32": kept_fp32,
                          "latency": _latency(built.model, lambda: OnnxClassifier(out, INT8_FILE),
                                              built.spec.image_size)}
    write_json_atomic(out / REPORT_FILE, report)
    return report


def describe(report: dict) -> str:
    """The lines ``hfvision export`` prints."""
    lines = [f"exported {report['model']} with {report['exporter']} (opset {report['opset']}); validated on "
             f"{report['validated_on']} images"]
    for kind in ("fp32", "int8"):
        if kind in report:
            block, latency = report[kind], report[kind]["latency"]
            text = (f"{kind}: max |logit difference| {block['max_abs_logit_difference']:.2e}, top-1 agreement "
                    f"{block['top1_agreement']:.4f}" + (f", accuracy {block['accuracy']:.4f}" if "accuracy" in block
                                                       else ""))
            for batch in LATENCY_BATCHES:
                b = latency[f"batch_{batch}"]
                text += (f"; batch {batch}: torch {b['torch_images_per_second']:.1f} img/s, onnxruntime "
                         f"{b['onnxruntime_images_per_second']:.1f} img/s ({b['onnxruntime_speedup']:.2f}x)")
            lines.append(text)
    return "\n".join(lines)



