"""The usual way at the wall-clock budget of an hfvision recipe (``--usual-way RECIPE``): the time-to-accuracy peer of
the CPU-budget study, a run dir whose ``metrics.json`` ``hfvision report`` overlays on the accuracy-vs-time plot.

A transformers ``ViTForImageClassification`` of the recipe's ScratchViT shape (random init) trains the usual way
(``benchmarks.usual_way``) under ``train.time_budget_minutes``: the cosine is sized once from the first
``TimeBudget.CALIBRATION_STEPS`` steps, training stops at the budget, validating each epoch and at the stop."""

import torch
from sklearn.metrics import f1_score
from transformers import ViTConfig, ViTForImageClassification

from benchmarks.usual_way import per_sample_loaders, per_sample_transforms, train_usual_way
from hfvision.accelerator import make_accelerator
from hfvision.data.sources import load_raw, split_dataset
from hfvision.evaluation.profile import model_profile
from hfvision.fileio import write_json_atomic
from hfvision.recipe import load_recipe


def usual_way_vit(shape: dict, num_labels: int) -> ViTForImageClassification:
    """transformers' ViT of a ScratchViT recipe's ``model.config`` (linear patches, CLS pooling), random init."""
    return ViTForImageClassification(ViTConfig(
        image_size=shape.get("image_size", 32), patch_size=shape.get("patch_size", 4),
        hidden_size=shape["hidden_size"], num_hidden_layers=shape["num_hidden_layers"],
        num_attention_heads=shape["num_attention_heads"],
        intermediate_size=shape.get("intermediate_size", 4 * shape["hidden_size"]), num_labels=num_labels,
        layer_norm_eps=1e-6))


def run(args, device, env: dict) -> dict:
    recipe = load_recipe(args.usual_way, [])
    train, data = recipe.train, recipe.data
    if recipe.model.name != "scratch_vit" or not train.time_budget_minutes:
        raise SystemExit(f"--usual-way: {args.usual_way} must be a scratch_vit recipe with train.time_budget_minutes")
    accelerator = make_accelerator()
    torch.manual_seed(recipe.seed)
    splits, image_column, label_column, label_names = split_dataset(load_raw(data.dataset), data, recipe.seed)
    model = usual_way_vit(recipe.model.config, len(label_names))
    profile = model_profile(model, model.config.image_size)
    transforms = per_sample_transforms(model.config.image_size, data.mean, data.std,
                                       data.augment.random_crop_padding, data.augment.horizontal_flip)
    loaders = per_sample_loaders(splits, image_column, label_column, args.workers, train.batch_size,
                                 recipe.eval.batch_size, transforms)
    trained = train_usual_way(model, loaders, accelerator, learning_rate=train.learning_rate,
                              weight_decay=train.weight_decay, epochs=train.epochs,
                              budget_minutes=train.time_budget_minutes)
    metrics = run_metrics(trained, profile, recipe, args, env)
    args.usual_way_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.usual_way_dir / "metrics.json", metrics)
    print(f"usual way: test accuracy {metrics['test']['accuracy']:.4f} after {trained['seconds'] / 60:.1f} min "
          f"-> {args.usual_way_dir}")
    return metrics


def run_metrics(trained: dict, profile: dict, recipe, args, env: dict) -> dict:
    """``metrics.json`` with the fields of an hfvision run that ``hfvision report`` reads."""
    flops_per_train_image = 3 * profile["flops_per_image"]
    history = [{**h, "train_flops": flops_per_train_image * h["images_seen"]} for h in trained["history"]]
    test, seconds = trained["test"], trained["seconds"]
    return {"model": {"name": "transformers ViTForImageClassification (usual way)", "tuning": "full", **profile},
            "test": {"accuracy": test["accuracy"],
                     "macro_f1": f1_score(test["labels"], test["predictions"], average="macro")},
            "best_epoch": history[-1]["epoch"], "history": history,
            "training": {"seconds": seconds, "images_seen": trained["images_seen"],
                         "optimizer_steps": trained["optimizer_steps"], "epochs": len(history),
                         "train_flops": flops_per_train_image * trained["images_seen"],
                         "time_budget_minutes": recipe.train.time_budget_minutes,
                         "time_budget_spent": trained["budget_spent"]},
            "timing": {"train_seconds_per_epoch": seconds / len(history)},
            "recipe": str(args.usual_way), "environment": env}
