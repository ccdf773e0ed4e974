"""Parameters, FLOPs, latency and train-step throughput of the shipped recipes' models (``--families``):
``<cpu|gpu>.json`` and ``.md``."""

import time
from pathlib import Path

import torch

from benchmarks.results import REPO, device_tag, hardware, number_cell
from benchmarks.timing import train_step_timer
from hfvision.evaluation.compare import markdown_table
from hfvision.evaluation.profile import inference_latency, model_profile
from hfvision.fileio import write_json_atomic
from hfvision.models.factory import build_model, resolve_input_spec
from hfvision.recipe import load_recipe

DEFAULT_RECIPES = {
    "quickstart ScratchViT": (REPO / "recipes/quickstart.yaml", []),
    "CPU-budget ScratchViT": (REPO / "recipes/studies/cpu_budget_cifar10/vit.yaml", ["data.dataset=synthetic"]),
    "HW6 ViT p4 d256 l8 h4": (REPO / "recipes/studies/hw6_cifar100/vit_grid.yaml",
                              ["model.config.num_hidden_layers=8", "data.dataset=synthetic"]),
    "strong ScratchViT (CIFAR-10)": (REPO / "recipes/vit_scratch_cifar10.yaml", ["data.dataset=synthetic"]),
    "CIFAR ResNet-18": (REPO / "recipes/resnet18_cifar10.yaml", ["data.dataset=synthetic"]),
    "Swin-T from scratch (32x32)": (REPO / "recipes/swin_scratch_cifar100.yaml", ["data.dataset=synthetic"]),
}
NOT_IN_TABLE = ("recipe", "image_size", "name", "tuning", "model_type")  # in the JSON only


def family_row(name: str, recipe_path: Path, overrides: list[str], batch_size: int, steps: int, device) -> dict:
    """One model's profile, inference latency and training images/s, in fp32 (and bf16 on a GPU)."""
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
        latency = inference_latency(model, size, batch_size, dtype=dtype)
        row[f"infer_ms_per_batch_{tag}"] = latency["inference_ms_per_batch"]
        row[f"train_images_per_s_{tag}"] = train_step_timer(model, image_size=size, batch_size=batch_size, steps=steps,
                                                            num_labels=model.config.num_labels, dtype=dtype)()
        if device.type == "cuda":
            row[f"peak_train_memory_mib_{tag}"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return row


def run(args, device, env: dict) -> list[dict]:
    specs = {p.stem: (p.resolve(), ["data.dataset=synthetic"]) for p in args.recipe} if args.recipe else DEFAULT_RECIPES
    rows = [family_row(name, path, overrides, args.batch_size, args.steps, device)
            for name, (path, overrides) in specs.items()]
    header = (f"# Benchmark on {hardware(env)}, batch {args.batch_size}, {time.strftime('%Y-%m-%d')}, torch "
              f"{env['packages']['torch']}, transformers {env['packages']['transformers']}; median of 10 timed "
              f"inference batches after 3 warm-up, training over {args.steps} steps after 1 warm-up")
    text = f"{header}\n\n" + markdown_table(rows, [k for k in rows[0] if k not in NOT_IN_TABLE], number_cell)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / f"{device_tag(device)}.json",
                      {"environment": env, "batch_size": args.batch_size, "rows": rows})
    (args.out / f"{device_tag(device)}.md").write_text(text)
    print(text)
    return rows
