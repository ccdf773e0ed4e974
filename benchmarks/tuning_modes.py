"""Trainable parameters and train-step images/s per tuning mode on a ViT-B/32 shape (``--tuning-modes``):
``tuning_modes.json`` and ``.md``."""

import tempfile
import time
from pathlib import Path

import torch

from benchmarks.checkpoints import save_random_vit_b32
from benchmarks.results import hardware, number_cell
from benchmarks.timing import train_step_timer
from hfvision.evaluation.compare import markdown_table
from hfvision.fileio import write_json_atomic
from hfvision.models.factory import build_model, resolve_input_spec
from hfvision.recipe import DataRecipe, LoraRecipe, ModelRecipe, TrainRecipe
from hfvision.training.optim import build_optimizer

# Each tuning mode as a recipe would ask for it: (model.tuning, train.layer_decay).
TUNING_MODES = {"head_only": ("head_only", None), "lora (r 16, q/v)": ("lora", None),
                "head_and_last_stage": ("head_and_last_stage", None), "full": ("full", None),
                "full + layer_decay 0.75": ("full", 0.75)}


def tuning_mode_row(source: Path, name: str, tuning: str, layer_decay: float | None, args, device) -> dict:
    """One tuning mode's trainable parameters and train-step images/s with the recipe's AdamW groups."""
    torch.manual_seed(0)
    model_recipe = ModelRecipe(name=str(source), tuning=tuning, lora=LoraRecipe())
    model = build_model(model_recipe, resolve_input_spec(model_recipe, DataRecipe()),
                        [str(i) for i in range(10)]).model.to(device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    optimizer = build_optimizer(model, TrainRecipe(learning_rate=1e-4, layer_decay=layer_decay))
    speed = train_step_timer(model, image_size=224, batch_size=args.batch_size, steps=args.steps,
                             optimizer=optimizer)()
    return {"tuning mode": name, "trainable parameters": trainable, "trainable %": 100 * trainable / total,
            "train images / s": speed}


def run(args, device, env: dict) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        source = save_random_vit_b32(Path(tmp))
        rows = []
        for name, (tuning, layer_decay) in TUNING_MODES.items():
            rows.append(tuning_mode_row(source, name, tuning, layer_decay, args, device))
            print(rows[-1])
    header = (f"# Tuning modes on a ViT-B/32 shape (224 px, 10 classes) on {hardware(env)}, batch {args.batch_size}, "
              f"fp32, {time.strftime('%Y-%m-%d')}, torch {env['packages']['torch']}, transformers "
              f"{env['packages']['transformers']}; train steps timed over {args.steps} steps after 1 warm-up")
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "tuning_modes.json",
                      {"environment": env, "batch_size": args.batch_size, "steps": args.steps, "rows": rows})
    shown = [{**row, "trainable %": f"{row['trainable %']:.3f}", "train images / s": f"{row['train images / s']:.2f}"}
             for row in rows]
    text = f"{header}\n\n" + markdown_table(shown, list(shown[0]), number_cell)
    (args.out / "tuning_modes.md").write_text(text)
    print(text)
    return rows
