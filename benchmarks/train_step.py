"""ScratchViT vs timm VisionTransformer vs transformers ViTForImageClassification, same shapes (``--train-step``):
train-step images/s, alternated, with the ratio to timm and (on a GPU) MFU."""

import statistics

import torch
from timm.models.vision_transformer import VisionTransformer
from torch.utils.flop_counter import FlopCounterMode
from transformers import ViTConfig, ViTForImageClassification

from benchmarks.results import write_results
from benchmarks.timing import alternate, train_step_timer
from hfvision.evaluation.compare import markdown_table
from hfvision.models.scratch_vit import ScratchViTConfig, ScratchViTForImageClassification

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
    width, depth, heads, mlp = (shape[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                   "intermediate_size"))
    scratch = ScratchViTForImageClassification(ScratchViTConfig(image_size=32, patch_size=4, num_labels=10, **shape))
    timm_vit = VisionTransformer(img_size=32, patch_size=4, num_classes=10, embed_dim=width, depth=depth,
                                 num_heads=heads, mlp_ratio=mlp / width, fc_norm=False,
                                 global_pool="token" if shape["pooling"] == "cls" else "avg")
    hf_vit = ViTForImageClassification(ViTConfig(image_size=32, patch_size=4, hidden_size=width,
                                                 num_hidden_layers=depth, num_attention_heads=heads,
                                                 intermediate_size=mlp, num_labels=10,
                                                 layer_norm_eps=1e-6))  # CLS pooling: its only head
    return {"hfvision ScratchViT": (scratch, lambda m, x: m(pixel_values=x).logits),
            "timm VisionTransformer": (timm_vit, lambda m, x: m(x)),
            "transformers ViTForImageClassification": (hf_vit, lambda m, x: m(pixel_values=x).logits)}


def forward_flops(model, forward, device) -> int:
    """Forward FLOPs of one 32x32 image (torch's FLOP counter; on GPUs it counts SDPA)."""
    counter = FlopCounterMode(display=False)
    model.eval()
    with torch.no_grad(), counter:
        forward(model, torch.zeros(1, 3, 32, 32, device=device))
    model.train()
    return int(counter.get_total_flops())


def measure_shape(shape: dict, dtype, peak: float | None, args, device) -> dict:
    """The three implementations of one shape at one precision (``dtype``), alternated: implementation -> numbers."""
    torch.manual_seed(0)
    implementations = vit_implementations(shape)
    measures = {name: train_step_timer(model.to(device), image_size=32, batch_size=args.train_step_batch,
                                       steps=args.steps, dtype=dtype, forward=forward)
                for name, (model, forward) in implementations.items()}
    speeds = {name: statistics.median(v) for name, v in alternate(measures, args.rounds).items()}
    results = {}
    for name, (model, forward) in implementations.items():
        train_flops = 3 * forward_flops(model, forward, device) if dtype is not None else None  # GPU only
        results[name] = {"parameters": sum(p.numel() for p in model.parameters()), "images_per_second": speeds[name],
                         "ratio_to_timm": speeds[name] / speeds["timm VisionTransformer"],
                         "train_flops_per_image": train_flops,
                         "mfu": speeds[name] * train_flops / peak if peak and train_flops else None}
        model.to("cpu")
    return results


def run(args, device, env: dict) -> dict:
    dtypes = {"fp32": None} if device.type == "cpu" else {"bf16": torch.bfloat16}
    peak = next((v for k, v in BF16_PEAK_FLOPS.items() if k in (env["gpu"] or "")), None)
    rows, results = [], {}
    for shape_name, shape in VIT_SHAPES.items():
        for precision, dtype in dtypes.items():
            for name, r in measure_shape(shape, dtype, peak, args, device).items():
                rows.append({"shape": shape_name, "implementation": name, "precision": precision,
                             "parameters": f"{r['parameters']:,}", "train images/s": f"{r['images_per_second']:.1f}",
                             "vs timm": f"{r['ratio_to_timm']:.3f}x",
                             "MFU": "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"})
                results.setdefault(shape_name, {})[f"{name} {precision}"] = r
    ratios = [r["ratio_to_timm"] for shape in results.values() for name, r in shape.items()
              if name.startswith("hfvision")]
    notes = [f"Batch {args.train_step_batch}, image 32, 10 classes, AdamW; {args.rounds} rounds of {args.steps} "
             f"steps per implementation, alternated, one warm-up step each; median images/s.",
             "timm: `VisionTransformer(..., fc_norm=False)` (CLS token or mean of patch tokens after the final "
             "norm, as ScratchViT); transformers: `ViTForImageClassification` (SDPA attention; CLS pooling only, "
             "so on the mean-pooling shape it pools the CLS token, a negligible difference in cost).",
             f"Target: ScratchViT >= 1.0x timm on both shapes: {', '.join(f'{r:.3f}x' for r in ratios)} -> "
             f"{'met' if min(ratios) >= 1.0 else 'MISSED'}.",
             "MFU (GPU only): 3 x forward FLOPs (torch's FLOP counter) x images/s over the GPU's dense bf16 peak."]
    write_results(args, device, env, "train_step", "Train step: ScratchViT vs timm vs transformers", notes,
                  markdown_table(rows, list(rows[0]), str), {"results": results})
    return results
