"""Speed of hfvision, measured side by side with the usual way, and the size and speed of model families.

    python scripts/benchmark.py                  # the four comparisons below, in one process (~15 min on 2 CPU cores)
    python scripts/benchmark.py --train-step --input-pipeline        # just these
    python scripts/benchmark.py --families       # parameters, FLOPs, latency, throughput of the shipped recipes
    python scripts/benchmark.py --families --recipe recipes/vit_scratch_cifar10.yaml --batch-size 128
    python scripts/benchmark.py --tuning-modes --batch-size 8 --steps 2   # each tuning mode on a ViT-B/32 shape
    python scripts/benchmark.py --usual-way recipes/studies/cpu_budget_cifar10/vit.yaml   # time-to-accuracy peer

Comparisons (each a ratio with the absolute numbers beside it; implementations alternate A B A B in one process
and the median is reported, because the machine may be shared):
  --train-step      ScratchViT vs timm VisionTransformer vs transformers ViTForImageClassification, same shapes
  --end-to-end      one epoch on real CIFAR-10: hfvision vs transformers' no_trainer example way
  --head-only       10 head-only epochs of a ViT-B/32-shaped backbone at 224 px with and without the feature cache
  --input-pipeline  crop/flip/resize/normalise: hfvision's batched path vs per-sample torchvision transforms
  --tuning-modes    trainable parameters and train-step images/s per tuning mode on a ViT-B/32 shape

Results go to benchmarks/<name>_<device>.json and .md (the README summarises them). Targets live here, never in
tests.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from hfvision.cli import reuse_freed_memory, run_cli  # noqa: E402
from hfvision.evaluation.environment import environment  # noqa: E402
from hfvision.evaluation.profile import inference_latency, model_profile  # noqa: E402
from hfvision.models.factory import build_model, resolve_input_spec  # noqa: E402
from hfvision.recipe import DataRecipe, LoraRecipe, ModelRecipe, TrainRecipe, load_recipe  # noqa: E402
from hfvision.training.optim import build_optimizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CIFAR10 = REPO.parent / "shared" / "data" / "cifar10"
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
DEFAULT_RECIPES = {
    "quickstart ScratchViT": (REPO / "recipes/quickstart.yaml", []),
    "CPU-budget ScratchViT": (REPO / "recipes/studies/cpu_budget_cifar10/vit.yaml", ["data.dataset=synthetic"]),
    "HW6 ViT p4 d256 l8 h4": (REPO / "recipes/studies/hw6_cifar100/vit_grid.yaml",
                              ["model.config.num_hidden_layers=8", "data.dataset=synthetic"]),
    "strong ScratchViT (CIFAR-10)": (REPO / "recipes/vit_scratch_cifar10.yaml", ["data.dataset=synthetic"]),
    "CIFAR ResNet-18": (REPO / "recipes/resnet18_cifar10.yaml", ["data.dataset=synthetic"]),
    "Swin-T from scratch (32x32)": (REPO / "recipes/swin_scratch_cifar100.yaml", ["data.dataset=synthetic"]),
}


def training_throughput(model, image_size: int, batch_size: int, steps: int, dtype) -> float:
    """Images per second of forward + backward + AdamW step, after one warm-up step."""
    device = next(model.parameters()).device
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    pixels = torch.randn(batch_size, 3, image_size, image_size, device=device)
    labels = torch.randint(0, model.config.num_labels, (batch_size,), device=device)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else torch.autocast(device.type, enabled=False)
    for step in range(steps + 1):
        if step == 1:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with autocast:
            loss = F.cross_entropy(model(pixel_values=pixels).logits.float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch_size * steps / (time.perf_counter() - start)


def benchmark(name, recipe_path, overrides, batch_size, steps, device) -> dict:
    recipe = load_recipe(recipe_path, overrides)
    built = build_model(recipe.model, resolve_input_spec(recipe.model, recipe.data), [str(i) for i in range(10)])
    model = built.model.to(device)
    size = built.spec.image_size
    row = {"model": name, "recipe": str(Path(recipe_path).relative_to(REPO)), **model_profile(model, size)}
    dtypes = [None] + ([torch.bfloat16] if device.type == "cuda" else [])
    for dtype in dtypes:
        tag = "bf16" if dtype else "fp32"
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        row[f"infer_ms_per_batch_{tag}"] = inference_latency(model, size, batch_size, dtype=dtype)["inference_ms_per_batch"]
        row[f"train_images_per_s_{tag}"] = training_throughput(model, size, batch_size, steps, dtype)
        if device.type == "cuda":
            row[f"peak_train_memory_mib_{tag}"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return row


# Each tuning mode as a recipe would ask for it: (model.tuning, train.layer_decay).
TUNING_MODES = {"head_only": ("head_only", None), "lora (r 16, q/v)": ("lora", None),
                "head_and_last_stage": ("head_and_last_stage", None), "full": ("full", None),
                "full + layer_decay 0.75": ("full", 0.75)}


def vit_b32_checkpoint(directory: Path) -> Path:
    """A ViT-B/32-shaped transformers checkpoint at random init, saved locally (no Hub access needed)."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(image_size=224, patch_size=32, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                       intermediate_size=3072, num_labels=1000)
    ViTForImageClassification(config).save_pretrained(directory)
    ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(directory)
    return directory


def tuning_mode_throughput(model, train: TrainRecipe, batch_size: int, steps: int) -> float:
    """Train-step images per second (forward, backward, the recipe's AdamW groups), after one warm-up step."""
    device = next(model.parameters()).device
    model.train()
    optimizer = build_optimizer(model, train)
    pixels = torch.randn(batch_size, 3, 224, 224, device=device)
    labels = torch.randint(0, 10, (batch_size,), device=device)
    for step in range(steps + 1):
        if step == 1:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        F.cross_entropy(model(pixel_values=pixels).logits, labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch_size * steps / (time.perf_counter() - start)


def benchmark_tuning_modes(batch_size: int, steps: int, device, out: Path) -> list[dict]:
    """Trainable parameters and train-step images/s of every tuning mode on the ViT-B/32 shape; writes
    ``tuning_modes.json``/``.md`` into ``out``."""
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        source = vit_b32_checkpoint(Path(tmp))
        for name, (tuning, layer_decay) in TUNING_MODES.items():
            torch.manual_seed(0)
            model_recipe = ModelRecipe(name=str(source), tuning=tuning, lora=LoraRecipe())
            model = build_model(model_recipe, resolve_input_spec(model_recipe, DataRecipe()),
                                [str(i) for i in range(10)]).model.to(device)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            total = sum(p.numel() for p in model.parameters())
            train = TrainRecipe(learning_rate=1e-4, layer_decay=layer_decay)
            rows.append({"tuning mode": name, "trainable parameters": trainable,
                         "trainable %": 100 * trainable / total,
                         "train images / s": tuning_mode_throughput(model, train, batch_size, steps)})
            print(rows[-1])
    env = environment()
    hardware = env["gpu"] or f"{env['cpu']} CPU x {env['cpu_count']} (torch threads {torch.get_num_threads()})"
    header = (f"# Tuning modes on a ViT-B/32 shape (224 px, 10 classes) on {hardware}, batch {batch_size}, fp32, "
              f"{time.strftime('%Y-%m-%d')}, torch {env['packages']['torch']}, transformers "
              f"{env['packages']['transformers']}; train steps timed over {steps} steps after 1 warm-up")
    out.mkdir(parents=True, exist_ok=True)
    (out / "tuning_modes.json").write_text(json.dumps({"environment": env, "batch_size": batch_size, "steps": steps,
                                                       "rows": rows}, indent=2))
    table = to_markdown([{**row, "trainable %": f"{row['trainable %']:.3f}",
                          "train images / s": f"{row['train images / s']:.2f}"} for row in rows], header)
    (out / "tuning_modes.md").write_text(table)
    print(table)
    return rows


def to_markdown(rows: list[dict], header: str) -> str:
    keys = [k for k in rows[0] if k not in ("recipe", "image_size", "name", "tuning", "model_type")]
    lines = [header, "", "| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    for row in rows:
        cells = [f"{row[k]:,}" if isinstance(row[k], int) else f"{row[k]:.1f}" if isinstance(row[k], float) else str(row[k])
                 for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def families_benchmark(args, device, env) -> None:
    """Parameters, FLOPs, latency and training throughput of the shipped recipes' models (``--families``)."""
    specs = {p.stem: (p.resolve(), ["data.dataset=synthetic"]) for p in args.recipe} if args.recipe else DEFAULT_RECIPES
    rows = [benchmark(name, path, overrides, args.batch_size, args.steps, device) for name, (path, overrides) in specs.items()]
    header = (f"# Benchmark on {hardware(env)}, batch {args.batch_size}, {time.strftime('%Y-%m-%d')}, torch "
              f"{env['packages']['torch']}, transformers {env['packages']['transformers']}; median of 10 timed "
              f"inference batches after 3 warm-up, training over {args.steps} steps after 1 warm-up")
    tag = "gpu" if device.type == "cuda" else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{tag}.json").write_text(json.dumps({"environment": env, "batch_size": args.batch_size, "rows": rows}, indent=2))
    (args.out / f"{tag}.md").write_text(to_markdown(rows, header))
    print(to_markdown(rows, header))


# ----------------------------------------------------------------------------------------------
# Comparisons: shared helpers


def hardware(env: dict) -> str:
    return env["gpu"] or f"{env['cpu']} CPU x {env['cpu_count']} (torch threads {torch.get_num_threads()})"


def write_comparison(args, device, env: dict, name: str, title: str, notes: list[str], table: str, data: dict) -> None:
    """``benchmarks/<name>_<cpu|gpu>.md`` (header, notes, table) and ``.json`` (environment and every number)."""
    versions = ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v)
    date = time.strftime("%Y-%m-%d %H:%M")
    text = (f"# {title}\n\n{hardware(env)}; {date}; Python {env['python']}, {versions}; git {env['git_sha']}; "
            f"malloc: {env['malloc']}.\n"
            f"Command: `python scripts/benchmark.py {' '.join(args.argv)}`\n\n" + "".join(f"- {n}\n" for n in notes)
            + "\n" + table)
    tag = "gpu" if device.type == "cuda" else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}_{tag}.md").write_text(text)
    (args.out / f"{name}_{tag}.json").write_text(json.dumps(
        {"title": title, "date": date, "command": ["scripts/benchmark.py", *args.argv], "environment": env,
         "notes": notes, **data}, indent=2))
    print(text, flush=True)


def markdown_table(columns: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def alternate(measures: dict, rounds: int) -> dict[str, list[float]]:
    """Call each measure once per round, in turn (A B C A B C ...), so load on a shared machine hits all alike."""
    results = {name: [] for name in measures}
    for _ in range(rounds):
        for name, measure in measures.items():
            results[name].append(measure())
    return results


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def met(value: float, target: float) -> str:
    return f"{value:.2f}x (target >= {target}x: {'met' if value >= target else 'MISSED'})"


# ----------------------------------------------------------------------------------------------
# 1. Train step: ScratchViT vs timm vs transformers, same shape

VIT_SHAPES = {  # image 32, patch 4, 10 classes
    "p4 w192 d6 h3 MLP 768, CLS": dict(hidden_size=192, num_hidden_layers=6, num_attention_heads=3,
                                       intermediate_size=768, pooling="cls"),
    "CPU-budget: p4 w128 d4 h4 MLP 256, mean pooling": dict(hidden_size=128, num_hidden_layers=4,
                                                            num_attention_heads=4, intermediate_size=256,
                                                            pooling="mean"),
}
BF16_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}  # dense bf16


def vit_implementations(shape: dict) -> dict:
    """The same ViT in three libraries: name -> (model, forward returning logits)."""
    from timm.models.vision_transformer import VisionTransformer
    from transformers import ViTConfig, ViTForImageClassification

    from hfvision.models.scratch_vit import ScratchViTConfig, ScratchViTForImageClassification

    width, depth, heads, mlp = (shape[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                   "intermediate_size"))
    scratch = ScratchViTForImageClassification(ScratchViTConfig(image_size=32, patch_size=4, num_labels=10, **shape))
    timm_vit = VisionTransformer(img_size=32, patch_size=4, num_classes=10, embed_dim=width, depth=depth,
                                 num_heads=heads, mlp_ratio=mlp / width, fc_norm=False,
                                 global_pool="token" if shape["pooling"] == "cls" else "avg")
    hf_vit = ViTForImageClassification(ViTConfig(image_size=32, patch_size=4, hidden_size=width, num_hidden_layers=depth,
                                                 num_attention_heads=heads, intermediate_size=mlp, num_labels=10,
                                                 layer_norm_eps=1e-6))  # CLS pooling: its only head
    return {"hfvision ScratchViT": (scratch, lambda m, x: m(pixel_values=x).logits),
            "timm VisionTransformer": (timm_vit, lambda m, x: m(x)),
            "transformers ViTForImageClassification": (hf_vit, lambda m, x: m(pixel_values=x).logits)}


def train_step_measure(model, forward, batch_size: int, steps: int, device, dtype):
    """A callable timing ``steps`` AdamW steps (forward, backward, update) -> images/s; one warm-up step first."""
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    pixels = torch.randn(batch_size, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (batch_size,), device=device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def step():
        with autocast:
            loss = F.cross_entropy(forward(model, pixels).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()

    def measure() -> float:
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        return batch_size * steps / (time.perf_counter() - start)
    return measure


def forward_flops(model, forward, device) -> int:
    """Forward FLOPs of one 32x32 image (torch's FLOP counter; on GPUs it counts SDPA)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    model.eval()
    with torch.no_grad(), counter:
        forward(model, torch.zeros(1, 3, 32, 32, device=device))
    model.train()
    return int(counter.get_total_flops())


def train_step_comparison(args, device, env) -> dict:
    dtypes = {"fp32": None} if device.type == "cpu" else {"bf16": torch.bfloat16}
    peak = next((v for k, v in BF16_PEAK_FLOPS.items() if k in (env["gpu"] or "")), None)
    rows, results = [], {}
    for shape_name, shape in VIT_SHAPES.items():
        torch.manual_seed(0)
        implementations = vit_implementations(shape)
        for precision, dtype in dtypes.items():
            measures = {name: train_step_measure(model, forward, args.train_step_batch, args.steps, device, dtype)
                        for name, (model, forward) in implementations.items()}
            speeds = {name: statistics.median(v) for name, v in alternate(measures, args.rounds).items()}
            base = speeds["timm VisionTransformer"]
            for name, (model, forward) in implementations.items():
                params = sum(p.numel() for p in model.parameters())
                train_flops = 3 * forward_flops(model, forward, device) if dtype is not None else None  # GPU only
                mfu = speeds[name] * train_flops / peak if peak and train_flops else None
                rows.append([shape_name, name, precision, f"{params:,}", f"{speeds[name]:.1f}",
                             f"{speeds[name] / base:.3f}x", "-" if mfu is None else f"{100 * mfu:.1f}%"])
                results.setdefault(shape_name, {})[f"{name} {precision}"] = {
                    "parameters": params, "images_per_second": speeds[name], "ratio_to_timm": speeds[name] / base,
                    "train_flops_per_image": train_flops, "mfu": mfu}
            for model, _ in implementations.values():
                model.to("cpu")
    ratios = [r["ratio_to_timm"] for shape in results.values() for name, r in shape.items() if name.startswith("hfvision")]
    notes = [f"Batch {args.train_step_batch}, image 32, 10 classes, AdamW; {args.rounds} rounds of {args.steps} "
             f"steps per implementation, alternated, one warm-up step each; median images/s.",
             "timm: `VisionTransformer(..., fc_norm=False)` (CLS token or mean of patch tokens after the final "
             "norm, as ScratchViT); transformers: `ViTForImageClassification` (SDPA attention; CLS pooling only, "
             "so on the mean-pooling shape it pools the CLS token, a negligible difference in cost).",
             f"Target: ScratchViT >= 1.0x timm on both shapes: {', '.join(f'{r:.3f}x' for r in ratios)} -> "
             f"{'met' if min(ratios) >= 1.0 else 'MISSED'}.",
             "MFU (GPU only): 3 x forward FLOPs (torch's FLOP counter) x images/s over the GPU's dense bf16 peak."]
    table = markdown_table(["shape", "implementation", "precision", "parameters", "train images/s", "vs timm", "MFU"], rows)
    write_comparison(args, device, env, "train_step", "Train step: ScratchViT vs timm vs transformers", notes, table,
                     {"results": results})
    return results


# ----------------------------------------------------------------------------------------------
# 4. Input pipeline alone: batched device-side path vs per-sample transforms


class PerSampleImages(torch.utils.data.Dataset):
    """PIL images through a per-sample torchvision transform, as ``datasets.with_transform`` pipelines do."""

    def __init__(self, images, transform):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.transform(self.images[index])


def decoded_images(cifar10: Path, count: int):
    """``count`` training images decoded once (decode is not timed): uint8 (N, 3, 32, 32) and PIL, plus the source."""
    from PIL import Image as PILImage

    from hfvision.data.sources import decode_split, find_columns, load_raw

    source = str(cifar10) if cifar10.exists() else "synthetic"
    train = load_raw(source)["train"]
    train = train.select(range(min(count, len(train))))
    image_column, label_column = find_columns(train.features, None, None)
    pixels = decode_split(train, image_column, label_column, None).pixels
    return pixels, [PILImage.fromarray(image.permute(1, 2, 0).numpy()) for image in pixels], source


def input_pipeline_comparison(args, device, env) -> dict:
    from torchvision import transforms as T

    from hfvision.data.transforms import BatchPreprocessor
    from hfvision.recipe import AugmentRecipe
    from hfvision.spec import InputSpec

    pixels, pil_images, source = decoded_images(args.cifar10, args.pipeline_images)
    batch = 128
    rows, results = [], {}
    for size in (32, 224):
        preprocessor = BatchPreprocessor(InputSpec(size, CIFAR10_MEAN, CIFAR10_STD),
                                         AugmentRecipe(random_crop_padding=4, horizontal_flip=True))
        per_sample = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]
                               + ([T.Resize(size)] if size != 32 else []) + [T.ToTensor(), T.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
        generator = torch.Generator().manual_seed(0)
        no_labels = torch.zeros(batch, dtype=torch.long)

        def batched() -> float:
            synchronize(device)
            start = time.perf_counter()
            for first in range(0, len(pixels), batch):
                x, _ = preprocessor(pixels[first:first + batch].to(device), no_labels[:len(pixels[first:first + batch])],
                                    train=True, generator=generator)
            synchronize(device)
            return len(pixels) / (time.perf_counter() - start)

        def per_sample_in_process() -> float:
            start = time.perf_counter()
            for first in range(0, len(pil_images), batch):
                x = torch.stack([per_sample(image) for image in pil_images[first:first + batch]]).to(device)
            synchronize(device)
            return len(pil_images) / (time.perf_counter() - start)

        loader = torch.utils.data.DataLoader(PerSampleImages(pil_images, per_sample), batch_size=batch,
                                             num_workers=args.workers, persistent_workers=True)

        def per_sample_workers() -> float:
            start = time.perf_counter()
            for x in loader:
                x = x.to(device)
            synchronize(device)
            return len(pil_images) / (time.perf_counter() - start)

        def one_thread(measure):
            def measure_on_one_thread() -> float:
                threads = torch.get_num_threads()
                torch.set_num_threads(1)
                try:
                    return measure()
                finally:
                    torch.set_num_threads(threads)
            return measure_on_one_thread

        def output_floor() -> float:
            """Only allocating each batch's new float32 tensor at the size and writing it once (a fill: nothing read,
            no arithmetic), under the process's allocator: the least any pipeline returning new tensors does."""
            synchronize(device)
            start = time.perf_counter()
            for first in range(0, len(pixels), batch):
                count = len(pixels[first:first + batch])
                x = torch.empty((count, 3, size, size), device=device).fill_(0.0)
            synchronize(device)
            return len(pixels) / (time.perf_counter() - start)

        measures = {"hfvision batched": batched, "floor: allocate and fill a new float batch": output_floor,
                    "per-sample, in process": per_sample_in_process,
                    f"per-sample, DataLoader {args.workers} workers": per_sample_workers,
                    "hfvision batched, 1 thread": one_thread(batched),
                    "per-sample, in process, 1 thread": one_thread(per_sample_in_process)}
        per_sample_workers()  # starts the workers
        speeds = {name: statistics.median(v) for name, v in alternate(measures, args.rounds).items()}
        del loader
        best_usual = max(v for k, v in speeds.items() if k.startswith("per-sample") and "1 thread" not in k)
        ratio = speeds["hfvision batched"] / best_usual
        per_core = speeds["hfvision batched, 1 thread"] / speeds["per-sample, in process, 1 thread"]
        floor = speeds["floor: allocate and fill a new float batch"]
        results[size] = {"images_per_second": speeds, "ratio_to_best_per_sample": ratio, "ratio_on_one_core": per_core,
                         "floor_to_best_per_sample": floor / best_usual}
        for name, value in speeds.items():
            reference = speeds["hfvision batched, 1 thread" if "1 thread" in name else "hfvision batched"]
            rows.append([f"{size} px", name, f"{value:,.0f}", f"{reference / value:.1f}x"])
    notes = [f"{len(pixels)} {'CIFAR-10' if source != 'synthetic' else 'synthetic'} training images decoded once "
             f"beforehand (decoding is not timed); random crop (pad 4) + horizontal flip at 32 px, bilinear resize to "
             f"the size, normalise; batches of {batch}; {args.rounds} alternated rounds, median.",
             "hfvision: `BatchPreprocessor` on uint8 batches (on this machine's device: "
             f"{device.type}); per-sample: torchvision `RandomCrop`, `RandomHorizontalFlip`, `Resize`, `ToTensor`, "
             "`Normalize` per PIL image and a stack, in the main process or in DataLoader workers.",
             "Both ways on 2 threads/processes (the machine's cores), and on one thread each (per-core efficiency; "
             "the 1-thread rows compare with each other).",
             "Target at 224 px: >= 5x the faster per-sample way on the same cores: "
             f"{met(results[224]['ratio_to_best_per_sample'], 5)}; on one core "
             f"{results[224]['ratio_on_one_core']:.1f}x; at 32 px: {results[32]['ratio_to_best_per_sample']:.1f}x "
             f"(one core {results[32]['ratio_on_one_core']:.1f}x).",
             "Floor: only allocating and filling the new float batches (nothing read, no arithmetic) is "
             f"{results[224]['floor_to_best_per_sample']:.1f}x the faster per-sample way at 224 px "
             f"({results[32]['floor_to_best_per_sample']:.1f}x at 32 px): the most a pipeline returning new tensors "
             "reaches under this process's memory allocator."]
    table = markdown_table(["size", "pipeline", "images/s", "hfvision is (same threads)"], rows)
    write_comparison(args, device, env, "input_pipeline", "Input pipeline alone: batched vs per-sample", notes, table,
                     {"results": results, "images": len(pixels), "source": source})
    return results



# ----------------------------------------------------------------------------------------------
# 2. End to end on real CIFAR-10: hfvision vs the usual way (transformers' no_trainer example)

CIFAR10_LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def save_random_vit(path: Path, image_size: int, patch_size: int, mean, std, **shape) -> Path:
    """A randomly initialised ``ViTForImageClassification`` saved like a Hub checkpoint (weights + processor)."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(image_size=image_size, patch_size=patch_size, num_labels=10,
                       id2label=dict(enumerate(CIFAR10_LABELS)), label2id={n: i for i, n in enumerate(CIFAR10_LABELS)},
                       **shape)
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": image_size, "width": image_size}, image_mean=list(mean),
                      image_std=list(std)).save_pretrained(path)
    return path


def fit_timed(recipe) -> tuple[dict, float]:
    from hfvision.pipeline import fit

    start = time.perf_counter()
    metrics = fit(recipe)
    return metrics, time.perf_counter() - start


def per_sample_loaders(splits, image_column: str, label_column: str, workers: int, batch_size: int,
                       eval_batch_size: int, train_transform, eval_transform) -> dict:
    """The usual way's data path: a torchvision transform per PIL image through ``datasets.with_transform``, a
    stacking collate, a ``DataLoader`` with workers per split (train shuffled)."""
    from torch.utils.data import DataLoader

    def with_pixels(transform):
        def apply(batch):
            batch["pixel_values"] = [transform(image.convert("RGB")) for image in batch[image_column]]
            return batch
        return apply

    def collate(examples):
        return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]),
                "labels": torch.tensor([e[label_column] for e in examples])}

    return {name: DataLoader(splits[name].with_transform(with_pixels(train_transform if name == "train" else eval_transform)),
                             shuffle=name == "train", collate_fn=collate, num_workers=workers,
                             batch_size=batch_size if name == "train" else eval_batch_size)
            for name in ("train", "validation", "test")}


def usual_way_run(model_dir: Path, splits, image_column: str, label_column: str, settings: dict, workers: int) -> dict:
    """transformers' ``run_image_classification_no_trainer.py`` way: per-sample torchvision transforms through
    ``datasets.with_transform``, a ``DataLoader`` with workers, a plain Accelerate loop; same optimiser and schedule."""
    from accelerate.utils import set_seed
    from torchvision import transforms as T
    from transformers import AutoModelForImageClassification, get_scheduler

    from hfvision.accelerator import make_accelerator
    from hfvision.training.optim import parameter_groups

    start = time.perf_counter()
    accelerator = make_accelerator()  # Accelerator(), with the singletons of the previous run in this process reset
    set_seed(settings["seed"])
    model = AutoModelForImageClassification.from_pretrained(model_dir)
    normalize = T.Normalize(CIFAR10_MEAN, CIFAR10_STD)
    loaders = per_sample_loaders(
        splits, image_column, label_column, workers, settings["batch_size"], settings["eval_batch_size"],
        train_transform=T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), normalize]),
        eval_transform=T.Compose([T.ToTensor(), normalize]))
    optimizer = torch.optim.AdamW(parameter_groups(model, settings["weight_decay"]), lr=settings["learning_rate"])
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=0,
                              num_training_steps=settings["epochs"] * len(loaders["train"]))
    model, optimizer, train_loader, val_loader, test_loader, scheduler = accelerator.prepare(
        model, optimizer, loaders["train"], loaders["validation"], loaders["test"], scheduler)

    def accuracy(loader) -> float:
        model.eval()
        correct = seen = 0
        with torch.no_grad():
            for batch in loader:
                predictions = model(pixel_values=batch["pixel_values"]).logits.argmax(-1)
                predictions, labels = accelerator.gather_for_metrics((predictions, batch["labels"]))
                correct, seen = correct + (predictions == labels).sum().item(), seen + len(labels)
        return correct / seen

    epoch_seconds, val_accuracy = [], None
    for _ in range(settings["epochs"]):
        model.train()
        epoch_start = time.perf_counter()
        for batch in train_loader:
            loss = model(**batch).loss
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        epoch_seconds.append(time.perf_counter() - epoch_start)
        val_accuracy = accuracy(val_loader)
    test_accuracy = accuracy(test_loader)
    images = len(splits["train"]) * settings["epochs"]
    return {"train_images_per_second": images / sum(epoch_seconds), "epoch_seconds": epoch_seconds,
            "val_accuracy": val_accuracy, "test_accuracy": test_accuracy, "wall_seconds": time.perf_counter() - start}


def end_to_end_comparison(args, device, env) -> dict | None:
    if not args.cifar10.is_dir():
        print(f"[end_to_end: skipped, no CIFAR-10 at {args.cifar10}]", flush=True)
        return None
    with tempfile.TemporaryDirectory(prefix="hfvision_e2e_") as work:  # models and run dirs: deleted afterwards
        return _end_to_end_comparison(args, device, env, Path(work))


def _end_to_end_comparison(args, device, env, work: Path) -> dict:
    from hfvision.data.sources import load_raw, split_dataset
    from hfvision.recipe import load_recipe

    shape = dict(hidden_size=192, num_hidden_layers=6, num_attention_heads=3, intermediate_size=768, layer_norm_eps=1e-6)
    model_dir = save_random_vit(work / "vit", 32, 4, CIFAR10_MEAN, CIFAR10_STD, **shape)
    settings = {"seed": 42, "epochs": args.e2e_epochs, "batch_size": 128, "eval_batch_size": 500,
                "learning_rate": 1e-3, "weight_decay": 0.05}

    def recipe(run: int):
        return load_recipe(None, [
            f"output_dir={work / f'hfvision_{run}'}", f"seed={settings['seed']}", f"model.name={model_dir}",
            f"data.dataset={args.cifar10}", f"data.max_train_samples={args.e2e_train_images}",
            f"data.max_eval_samples={args.e2e_eval_images}", f"data.mean={list(CIFAR10_MEAN)}",
            f"data.std={list(CIFAR10_STD)}", "data.augment.random_crop_padding=4", "data.augment.horizontal_flip=true",
            f"train.epochs={settings['epochs']}", f"train.batch_size={settings['batch_size']}",
            f"train.learning_rate={settings['learning_rate']}", f"train.weight_decay={settings['weight_decay']}",
            "train.optimizer=adamw", "train.scheduler=cosine", "train.warmup_epochs=0", "train.max_grad_norm=null",
            "train.report_to=none", f"eval.batch_size={settings['eval_batch_size']}", "eval.latency_batch_size=8",
            "eval.explain=false"])

    splits, image_column, label_column, _ = split_dataset(load_raw(str(args.cifar10)), recipe(0).data, settings["seed"])
    runs = {"hfvision": [], "usual way": []}
    for run in range(args.e2e_rounds):  # A B A B
        runs["usual way"].append(usual_way_run(model_dir, splits, image_column, label_column, settings, args.workers))
        metrics, wall = fit_timed(recipe(run))
        seconds = [h["epoch_seconds"] for h in metrics["history"]]
        runs["hfvision"].append({"train_images_per_second": len(splits["train"]) * len(seconds) / sum(seconds),
                                 "epoch_seconds": seconds, "val_accuracy": metrics["history"][-1]["val_accuracy"],
                                 "test_accuracy": metrics["test"]["accuracy"], "wall_seconds": wall})
    median = {name: {key: statistics.median(r[key] for r in rs) for key in
                     ("train_images_per_second", "test_accuracy", "val_accuracy", "wall_seconds")}
              for name, rs in runs.items()}
    ratio = median["hfvision"]["train_images_per_second"] / median["usual way"]["train_images_per_second"]
    rows = [[name, f"{m['train_images_per_second']:.1f}", f"{100 * m['val_accuracy']:.2f}%",
             f"{100 * m['test_accuracy']:.2f}%", f"{m['wall_seconds']:.0f}"] for name, m in median.items()]
    notes = [f"Real CIFAR-10 ({args.cifar10}): {len(splits['train'])} training images (seeded stratified subset), "
             f"{len(splits['validation'])} validation, {len(splits['test'])} test; {settings['epochs']} epoch(s), "
             f"batch {settings['batch_size']}, AdamW lr {settings['learning_rate']} wd {settings['weight_decay']} "
             "(decay on matrices only, both), cosine per step, no warmup, no clipping, fp32; random crop (pad 4) + "
             f"flip; {args.e2e_rounds} round(s) of usual way then hfvision, median.",
             "Model: transformers `ViTForImageClassification`, patch 4, width 192, depth 6, 3 heads, MLP 768, the "
             "same random initial weights saved to a local dir that both load.",
             f"Usual way: as transformers' `run_image_classification_no_trainer.py` (per-sample torchvision transforms "
             f"through `datasets.with_transform`, `DataLoader` with {args.workers} workers, plain Accelerate loop, "
             "validation each epoch); hfvision: `hfvision.pipeline.fit` on the equivalent recipe (images decoded once, "
             "batched augmentation).",
             "Train images/s: training images over the epochs' training-loop seconds. Wall: the whole call; hfvision's "
             "also decodes the splits and writes the run dir (best/, last/, checkpoint/, FLOPs and latency profile, "
             "plots, report, model card).",
             f"Target: hfvision >= 1.15x the usual way's train images/s at equal test accuracy: {met(ratio, 1.15)}."]
    table = markdown_table(["pipeline", "train images/s", "val accuracy", "test accuracy", "wall s"], rows)
    table += f"\nhfvision / usual way, train images/s: **{ratio:.2f}x**\n"
    write_comparison(args, device, env, "end_to_end", "End to end on CIFAR-10: hfvision vs the usual way", notes,
                     table, {"runs": runs, "median": median, "ratio": ratio, "settings": settings})
    return median


# ----------------------------------------------------------------------------------------------
# 3. Head-only tuning with and without the feature cache


def head_only_comparison(args, device, env) -> dict:
    # The run dirs and the ViT-B/32 feature cache take gigabytes: deleted afterwards, and the cache variable restored.
    previous_cache = os.environ.get("HFVISION_CACHE")
    try:
        with tempfile.TemporaryDirectory(prefix="hfvision_head_only_") as work:
            return _head_only_comparison(args, device, env, Path(work))
    finally:
        if previous_cache is None:
            os.environ.pop("HFVISION_CACHE", None)
        else:
            os.environ["HFVISION_CACHE"] = previous_cache


def _head_only_comparison(args, device, env, work: Path) -> dict:
    from safetensors.torch import load_file

    from hfvision.recipe import load_recipe

    source = str(args.cifar10) if args.cifar10.is_dir() else "synthetic"
    model_dir = args.head_only_model or save_random_vit(work / "vit_b32", 224, 32, (0.5,) * 3, (0.5,) * 3)  # ViT-B/32 shape
    os.environ["HFVISION_CACHE"] = str(work / "feature_cache")  # a cold cache: building it is part of the time

    def recipe(name: str, cache: str):
        return load_recipe(None, [
            f"output_dir={work / name}", f"model.name={model_dir}", "model.tuning=head_only", f"data.dataset={source}",
            "data.image_size=224", f"data.max_train_samples={args.head_only_train_images}",
            f"data.max_eval_samples={args.head_only_eval_images}", "data.augment.random_crop_padding=0",
            "data.augment.horizontal_flip=false", f"train.epochs={args.head_only_epochs}", "train.batch_size=32",
            "train.learning_rate=0.001", "train.optimizer=adam", "train.weight_decay=0", "train.scheduler=constant",
            f"train.feature_cache={cache}", "train.report_to=none", "eval.batch_size=50", "eval.latency_batch_size=1",
            "eval.explain=false"])

    runs = {}
    for name, cache in (("without cache", "off"), ("with cache (cold)", "on"), ("with cache (warm)", "on")):
        metrics, wall = fit_timed(recipe(name.replace(" ", "_").strip("()"), cache))
        build = metrics["feature_cache"]["seconds"] or 0.0
        runs[name] = {"wall_seconds": wall, "training_seconds": build + metrics["training"]["seconds"],
                      "cache_seconds": build, "val_accuracy": [h["val_accuracy"] for h in metrics["history"]],
                      "test_accuracy": metrics["test"]["accuracy"]}
    heads = {name: load_file(work / name.replace(" ", "_").strip("()") / "last" / "model.safetensors")["classifier.weight"]
             for name in ("without cache", "with cache (cold)")}
    head_difference = (heads["without cache"] - heads["with cache (cold)"]).abs().max().item()
    plain, cold, warm = runs["without cache"], runs["with cache (cold)"], runs["with cache (warm)"]
    speedup = plain["training_seconds"] / cold["training_seconds"]
    val_gap = 100 * abs(plain["val_accuracy"][-1] - cold["val_accuracy"][-1])
    rows = [[name, f"{r['training_seconds']:.1f}", f"{r['cache_seconds']:.1f}", f"{r['wall_seconds']:.1f}",
             f"{plain['training_seconds'] / r['training_seconds']:.1f}x", f"{100 * r['val_accuracy'][-1]:.2f}%",
             f"{100 * r['test_accuracy']:.2f}%"] for name, r in runs.items()]
    backbone = (f"`{args.head_only_model}` at 224 px" if args.head_only_model else
                "ViT-B/32-shaped `ViTForImageClassification` (width 768, depth 12, 12 heads, patch 32) at 224 px, random "
                "weights saved locally (a stand-in for a Hub checkpoint)")
    notes = [f"{backbone}; head-only; {source}: "
             f"{args.head_only_train_images} training images, {args.head_only_eval_images} validation, "
             f"{args.head_only_eval_images} test (32 px, resized per batch); {args.head_only_epochs} epochs, batch 32, "
             "Adam 1e-3, constant LR, no augmentation, fp32.",
             "Training = building the cache (cold: the frozen backbone over train and validation once; warm: reading "
             "it) + the epochs with validation after each. Wall = the whole `fit` (loading, training, test evaluation "
             "of best/ through the real model, FLOPs and latency profile, run files).",
             f"Target: >= 8x less training time with the cache (cold) than without: {met(speedup, 8)}; validation "
             f"accuracy equal within 0.2 points: {val_gap:.2f} points ({'met' if val_gap <= 0.2 else 'MISSED'}); "
             f"largest difference between the two trained heads: {head_difference:.1e}."]
    table = markdown_table(["run", "training s", "of which cache s", "wall s", "training speed-up",
                            "final val accuracy", "test accuracy"], rows)
    write_comparison(args, device, env, "head_only", "Head-only tuning with and without the feature cache", notes,
                     table, {"runs": runs, "speedup": speedup, "val_accuracy_gap_points": val_gap,
                             "head_max_abs_difference": head_difference, "source": source})
    return runs


# ----------------------------------------------------------------------------------------------
# 5. Time to accuracy: the usual way at a wall-clock budget, as a run dir `hfvision report` overlays

def usual_way_budget_run(args, device, env) -> dict:
    """The usual way trained for the wall-clock budget of an hfvision recipe (``train.time_budget_minutes``): a
    transformers ``ViTForImageClassification`` of the recipe's ScratchViT shape (random init), per-sample torchvision
    transforms through ``datasets.with_transform``, a ``DataLoader`` with workers, AdamW + cosine, a plain Accelerate
    loop. The cosine is sized once, after ``TimeBudget.CALIBRATION_STEPS`` steps (hfvision's first resize), to the
    steps that fit in the budget (the estimate a person makes from the first minute); training stops at the budget and validates each epoch and at the
    stop. Writes ``metrics.json`` with the history fields of an hfvision run, so the accuracy-vs-time plot of
    ``hfvision report`` draws both."""
    import math

    from sklearn.metrics import f1_score
    from torchvision import transforms as T
    from transformers import ViTConfig, ViTForImageClassification

    from hfvision.accelerator import make_accelerator
    from hfvision.data.sources import load_raw, split_dataset
    from hfvision.fileio import write_json_atomic
    from hfvision.training.optim import parameter_groups
    from hfvision.training.trainer import TimeBudget

    recipe = load_recipe(args.usual_way, [])
    train, data, shape = recipe.train, recipe.data, recipe.model.config
    if recipe.model.name != "scratch_vit" or not train.time_budget_minutes:
        raise SystemExit(f"--usual-way: {args.usual_way} must be a scratch_vit recipe with train.time_budget_minutes")
    budget = train.time_budget_minutes * 60
    accelerator = make_accelerator()
    torch.manual_seed(recipe.seed)
    splits, image_column, label_column, label_names = split_dataset(load_raw(data.dataset), data, recipe.seed)
    config = ViTConfig(image_size=shape.get("image_size", 32), patch_size=shape.get("patch_size", 4),
                       hidden_size=shape["hidden_size"], num_hidden_layers=shape["num_hidden_layers"],
                       num_attention_heads=shape["num_attention_heads"], intermediate_size=shape.get("intermediate_size", 4 * shape["hidden_size"]),
                       num_labels=len(label_names), layer_norm_eps=1e-6)
    model = ViTForImageClassification(config)
    profile = model_profile(model, config.image_size)
    normalize = T.Normalize(data.mean, data.std)
    augment = []
    if data.augment.random_crop_padding:
        augment.append(T.RandomCrop(config.image_size, padding=data.augment.random_crop_padding))
    if data.augment.horizontal_flip:
        augment.append(T.RandomHorizontalFlip())
    loaders = per_sample_loaders(splits, image_column, label_column, args.workers, train.batch_size,
                                 recipe.eval.batch_size, train_transform=T.Compose([*augment, T.ToTensor(), normalize]),
                                 eval_transform=T.Compose([T.ToTensor(), normalize]))
    optimizer = torch.optim.AdamW(parameter_groups(model, train.weight_decay), lr=train.learning_rate)
    total_steps = [train.epochs * len(loaders["train"])]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step / total_steps[0], 1.0))))
    model, optimizer, train_loader, val_loader, test_loader, scheduler = accelerator.prepare(
        model, optimizer, loaders["train"], loaders["validation"], loaders["test"], scheduler)

    def evaluate(loader) -> tuple[float, float, list, list]:
        model.eval()
        loss_sum, predictions, labels = 0.0, [], []
        with torch.no_grad():
            for batch in loader:
                output = model(**batch)
                loss_sum += output.loss.item() * len(batch["labels"])
                predictions += output.logits.argmax(-1).tolist()
                labels += batch["labels"].tolist()
        return loss_sum / len(labels), sum(p == t for p, t in zip(predictions, labels)) / len(labels), predictions, labels

    history, step, images_seen, start, spent = [], 0, 0, time.perf_counter(), False
    for epoch in range(1, train.epochs + 1):
        model.train()
        loss_sum = correct = seen = 0
        for batch in train_loader:
            output = model(**batch)
            accelerator.backward(output.loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step, images_seen = step + 1, images_seen + len(batch["labels"])
            loss_sum += output.loss.item() * len(batch["labels"])
            correct += (output.logits.argmax(-1) == batch["labels"]).sum().item()
            seen += len(batch["labels"])
            if step == TimeBudget.CALIBRATION_STEPS:
                total_steps[0] = max(step + 1, round(budget * step / (time.perf_counter() - start)))
            if time.perf_counter() - start >= budget:
                spent = True
                break
        val_loss, val_accuracy, _, _ = evaluate(val_loader)
        history.append({"epoch": epoch, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                        "val_loss": val_loss, "val_accuracy": val_accuracy, "images_seen": images_seen,
                        "elapsed_seconds": time.perf_counter() - start,
                        "train_flops": 3 * profile["flops_per_image"] * images_seen})
        print(f"usual way epoch {epoch}: val acc {val_accuracy:.4f} at {history[-1]['elapsed_seconds'] / 60:.1f} min",
              flush=True)
        if spent:
            break
    seconds = time.perf_counter() - start
    _, test_accuracy, predictions, labels = evaluate(test_loader)
    metrics = {"model": {"name": "transformers ViTForImageClassification (usual way)", "tuning": "full", **profile},
               "test": {"accuracy": test_accuracy, "macro_f1": f1_score(labels, predictions, average="macro")},
               "best_epoch": history[-1]["epoch"], "history": history,
               "training": {"seconds": seconds, "images_seen": images_seen, "optimizer_steps": step,
                            "epochs": len(history), "train_flops": 3 * profile["flops_per_image"] * images_seen,
                            "time_budget_minutes": train.time_budget_minutes, "time_budget_spent": spent},
               "timing": {"train_seconds_per_epoch": seconds / len(history)},
               "recipe": str(args.usual_way), "environment": env}
    args.usual_way_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.usual_way_dir / "metrics.json", metrics)
    print(f"usual way: test accuracy {test_accuracy:.4f} after {seconds / 60:.1f} min -> {args.usual_way_dir}")
    return metrics


def onnx_benchmark(args, device, env) -> None:
    """torch eager vs onnxruntime fp32 vs int8 for each --onnx model: images/s at batch 1 and 64 and accuracy on
    --onnx-data's test split (``hfvision.export.export_onnx`` measures; this tabulates)."""
    from hfvision.export import export_onnx
    from hfvision.fileio import write_json_atomic

    rows, reports = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for index, model in enumerate(args.onnx):
            report = export_onnx(str(model), Path(tmp) / str(index), data=args.onnx_data, split="test",
                                 max_samples=args.onnx_test_images, int8=True)
            reports[str(model)] = report
            fp32, int8 = report["fp32"], report["int8"]
            for batch in ("batch_1", "batch_64"):
                a, b = fp32["latency"][batch], int8["latency"][batch]
                rows.append([str(model), batch.replace("_", " "), f"{a['torch_images_per_second']:.1f}",
                             f"{a['onnxruntime_images_per_second']:.1f} ({a['onnxruntime_speedup']:.2f}x)",
                             f"{b['onnxruntime_images_per_second']:.1f} "
                             f"({b['onnxruntime_images_per_second'] / a['torch_images_per_second']:.2f}x)",
                             f"{report['torch_reference']['accuracy']:.4f}", f"{fp32['accuracy']:.4f}",
                             f"{int8['accuracy']:.4f}", f"{fp32['max_abs_logit_difference']:.1e}"])
    header = ["model", "batch", "torch img/s", "ORT fp32 img/s", "ORT int8 img/s", "torch acc", "fp32 acc",
              "int8 acc", "max logit diff"]
    table = "\n".join("| " + " | ".join(r) + " |" for r in [header, ["---"] * len(header), *rows])
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "onnx_cpu.json", {"reports": reports, "environment": env, "argv": args.argv})
    (args.out / "onnx_cpu.md").write_text(f"# torch vs onnxruntime (fp32, int8) on this machine\n\n"
                                          f"`python scripts/benchmark.py {' '.join(args.argv)}`, "
                                          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; accuracy on the first {args.onnx_test_images} "
                                          f"images of {args.onnx_data}'s test split; the ratios are to torch's "
                                          f"images/s in the same row\n\n{table}\n")
    print(table)


COMPARISONS = {"train_step": train_step_comparison, "end_to_end": end_to_end_comparison,
               "head_only": head_only_comparison, "input_pipeline": input_pipeline_comparison}


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in COMPARISONS:
        parser.add_argument(f"--{name.replace('_', '-')}", action="store_true", help="run this comparison")
    parser.add_argument("--families", action="store_true", help="parameters, FLOPs, latency, throughput per recipe")
    parser.add_argument("--tuning-modes", action="store_true",
                        help="trainable parameters and train-step images/s per tuning mode, ViT-B/32 shape")
    parser.add_argument("--recipe", action="append", type=Path, help="--families: these recipes' models instead")
    parser.add_argument("--batch-size", type=int, default=64, help="--families: batch size")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per measurement")
    parser.add_argument("--rounds", type=int, default=4, help="alternated rounds per comparison (median reported)")
    parser.add_argument("--train-step-batch", type=int, default=128)
    parser.add_argument("--pipeline-images", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the per-sample way")
    parser.add_argument("--e2e-train-images", type=int, default=10_000)
    parser.add_argument("--e2e-eval-images", type=int, default=2_000, help="validation and test images each")
    parser.add_argument("--e2e-epochs", type=int, default=1)
    parser.add_argument("--e2e-rounds", type=int, default=1)
    parser.add_argument("--head-only-train-images", type=int, default=250)
    parser.add_argument("--head-only-eval-images", type=int, default=50, help="validation and test images each")
    parser.add_argument("--head-only-epochs", type=int, default=10)
    parser.add_argument("--head-only-model", type=Path, default=None,
                        help="--head-only: this checkpoint (e.g. ../shared/models/vit-tiny-patch16-224) instead of a "
                             "random ViT-B/32-shaped one")
    parser.add_argument("--cifar10", type=Path, default=CIFAR10, help="real CIFAR-10 (Parquet, img/label)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks")
    parser.add_argument("--usual-way", type=Path, metavar="RECIPE",
                        help="train the usual way for this scratch_vit recipe's time budget (time-to-accuracy peer)")
    parser.add_argument("--onnx", nargs="+", type=Path, metavar="MODEL",
                        help="torch vs onnxruntime fp32 and int8 for these trained models (run or model dirs)")
    parser.add_argument("--onnx-data", default=str(CIFAR10), help="--onnx: the dataset whose test split is scored")
    parser.add_argument("--onnx-test-images", type=int, default=1000, help="--onnx: test images scored")
    parser.add_argument("--usual-way-dir", type=Path, default=REPO / "runs/cpu_budget_cifar10/usual_way",
                        help="--usual-way: where its metrics.json goes")
    args = parser.parse_args(argv)
    args.argv = argv
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    env = environment()
    # run_cli made this call already, as for every hfvision command; it returns the same answer again.
    env["malloc"] = ("freed large blocks kept for reuse (hfvision.cli.reuse_freed_memory), as in hfvision's commands"
                     if reuse_freed_memory() else "the C library's defaults or the environment's settings")
    args.families = args.families or bool(args.recipe)  # --recipe names the models of the --families table
    chosen = [name for name in COMPARISONS if getattr(args, name)]
    if args.usual_way:
        usual_way_budget_run(args, device, env)
        return
    if args.onnx:
        onnx_benchmark(args, device, env)
        return
    if args.tuning_modes:
        benchmark_tuning_modes(args.batch_size, args.steps, device, args.out)
    if args.families:
        families_benchmark(args, device, env)
    if not chosen and not (args.families or args.tuning_modes):
        chosen = list(COMPARISONS)
    for name in chosen:
        start = time.perf_counter()
        COMPARISONS[name](args, device, env)
        print(f"[{name}: {time.perf_counter() - start:.0f}s]", flush=True)


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
