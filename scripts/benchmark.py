"""Speed and size of model families: parameters, FLOPs per image, inference latency and training throughput.

    python scripts/benchmark.py                          # the default set, on this machine's device
    python scripts/benchmark.py --recipe recipes/vit_scratch_cifar10.yaml --batch-size 128
    python scripts/benchmark.py --tuning-modes --batch-size 8 --steps 2   # each tuning mode on a ViT-B/32 shape

Results go to benchmarks/<device>.json and .md, or benchmarks/tuning_modes.json and .md (the README summarises
them). Targets live here, never in tests.
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]  # see finetune.py

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from hfvision.cli import run_cli  # noqa: E402
from hfvision.evaluation.environment import environment  # noqa: E402
from hfvision.evaluation.profile import inference_latency, model_profile  # noqa: E402
from hfvision.models.factory import build_model, resolve_input_spec  # noqa: E402
from hfvision.recipe import DataRecipe, LoraRecipe, ModelRecipe, TrainRecipe, load_recipe  # noqa: E402
from hfvision.training.optim import build_optimizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
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


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", action="append", type=Path, help="benchmark these recipes' models instead")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks")
    parser.add_argument("--tuning-modes", action="store_true",
                        help="instead: trainable parameters and train-step images/s per tuning mode, ViT-B/32 shape")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    if args.tuning_modes:
        benchmark_tuning_modes(args.batch_size, args.steps, device, args.out)
        return
    specs = {p.stem: (p.resolve(), ["data.dataset=synthetic"]) for p in args.recipe} if args.recipe else DEFAULT_RECIPES
    rows = [benchmark(name, path, overrides, args.batch_size, args.steps, device) for name, (path, overrides) in specs.items()]
    env = environment()
    hardware = env["gpu"] or f"{env['cpu']} CPU x {env['cpu_count']} (torch threads {torch.get_num_threads()})"
    header = (f"# Benchmark on {hardware}, batch {args.batch_size}, {time.strftime('%Y-%m-%d')}, torch "
              f"{env['packages']['torch']}, transformers {env['packages']['transformers']}; median of 10 timed "
              f"inference batches after 3 warm-up, training over {args.steps} steps after 1 warm-up")
    args.out.mkdir(parents=True, exist_ok=True)
    tag = "gpu" if device.type == "cuda" else "cpu"
    (args.out / f"{tag}.json").write_text(json.dumps({"environment": env, "batch_size": args.batch_size, "rows": rows}, indent=2))
    (args.out / f"{tag}.md").write_text(to_markdown(rows, header))
    print(to_markdown(rows, header))


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
