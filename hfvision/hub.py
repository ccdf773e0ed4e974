"""Share a run: a model card in ``best/`` and a push of ``best/`` to the Hugging Face Hub.

``best/`` is already a ``save_pretrained`` dir (weights as safetensors, config with ``id2label``, image
processor config, custom code via ``auto_map`` for the scratch families). The card adds YAML metadata
(library, pipeline tag, datasets, base model, ``model-index`` results) that ``huggingface_hub.ModelCard``
parses, the measured metrics, the recipe, the curves and the confusion matrix.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from hfvision.errors import HfvisionError
from hfvision.models.families import BUILT_IN, ships_code

CARD_FIGURES = ("curves.png", "confusion_matrix.png", "gradcam_per_class.png")


def _dataset_id(dataset: str) -> str | None:
    """A Hub dataset id for the card's metadata; local dirs and the built-in generator have none."""
    if dataset == "synthetic" or dataset.startswith(("/", ".", "~")) or Path(dataset).exists():
        return None
    return dataset


def build_model_card(recipe: dict, metrics: dict, repo_id: str | None = None) -> ModelCard:
    model, data = recipe["model"], recipe["data"]
    test = metrics["test"]
    dataset_name = Path(data["dataset"]).name if _dataset_id(data["dataset"]) is None else data["dataset"]
    dataset_id = _dataset_id(data["dataset"])
    results = [EvalResult(task_type="image-classification", dataset_type=dataset_id or dataset_name,
                          dataset_name=dataset_name, dataset_split="test", metric_type=metric, metric_value=value,
                          metric_name=name)
               for metric, name, value in (("accuracy", "Accuracy", test["accuracy"]),
                                           ("f1", "Macro F1", test["macro_f1"]),
                                           ("top_5_accuracy", "Top-5 accuracy", test["top5_accuracy"]))]
    card_data = ModelCardData(
        library_name="transformers", pipeline_tag="image-classification", license="apache-2.0",
        tags=["hfvision", "image-classification", metrics["model"]["model_type"]],
        datasets=[dataset_id] if dataset_id else None, metrics=["accuracy", "f1"],
        base_model=None if model["name"] in BUILT_IN else model["name"],
        model_name=repo_id or f"{model['name']}-{dataset_name}", eval_results=results)
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + _card_body(recipe, metrics, repo_id))


def _card_body(recipe: dict, metrics: dict, repo_id: str | None) -> str:
    model, data, test = recipe["model"], recipe["data"], metrics["test"]
    profile, timing = metrics["model"], metrics["timing"]
    trust = "trust_remote_code=True" if ships_code(profile["model_type"]) else ""
    name = repo_id or "path/to/this/dir"
    pipeline_args = f'"image-classification", model="{name}"' + (f", {trust}" if trust else "")
    lines = [
        f"# {model['name']} on {Path(data['dataset']).name}",
        "",
        f"Trained with hfvision ({model['tuning']} tuning, {len(metrics['history'])} epochs, "
        f"best epoch {metrics['best_epoch']} by validation accuracy).",
        "",
        "## Use", "", "```python", "from transformers import pipeline", "",
        f"classifier = pipeline({pipeline_args})", 'print(classifier("image.png"))', "```", "",
        *_lora_note(model),
        "## Results (test split)", "", "| metric | value |", "| --- | --- |",
        f"| accuracy | {test['accuracy']:.4f} |", f"| top-5 accuracy | {test['top5_accuracy']:.4f} |",
        f"| macro F1 | {test['macro_f1']:.4f} |", f"| test images | {test['num_samples']} |",
        f"| parameters | {profile['parameters']:,} |",
        (f"| trainable parameters ({model['tuning']} tuning) | {profile['trainable_parameters']:,} "
         f"({100 * profile['trainable_share']:.2f}%) |"),
        f"| FLOPs per image | {profile['flops_per_image']:,} |",
        f"| inference ms per batch of {timing['latency_batch_size']} ({timing['device']}) | "
        f"{timing['inference_ms_per_batch']:.2f} |", "",
        "| class | precision | recall | F1 | support |", "| --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {c} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} | {r['support']} |"
              for c, r in test["per_class"].items()]
    lines += ["", "![training curves](curves.png)", "", "![confusion matrix](confusion_matrix.png)", "",
              "## Recipe", "", "```yaml", yaml.safe_dump(recipe, sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)


def _lora_note(model: dict) -> list[str]:
    """For LoRA runs: the weights here are merged; the adapter itself is in ``adapter/``."""
    if model["tuning"] != "lora":
        return []
    lora = model["lora"]
    note = (f"The weights are merged from a LoRA fine-tune (r={lora['r']}, alpha={lora['alpha']:g}, targets "
            f"{lora['target_modules'] or 'the family default'}) of `{model['name']}`; the adapter alone is in "
            "`adapter/` (`PeftModel.from_pretrained(base_model, \"adapter\")`, with the base's head sized for "
            "these labels).")
    return [note, ""]


def write_model_card(run_dir: str | Path, repo_id: str | None = None) -> Path:
    """Write ``best/README.md`` (and copy the figures beside it) from the run's recipe and metrics."""
    run_dir = Path(run_dir)
    best = run_dir / "best"
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for figure in CARD_FIGURES:
        if (run_dir / figure).is_file():
            shutil.copy2(run_dir / figure, best / figure)
    card = build_model_card(recipe, metrics, repo_id or recipe.get("hub", {}).get("repo_id"))
    card.save(best / "README.md")
    return best / "README.md"


def push_to_hub(run_dir: str | Path, repo_id: str, private: bool = False, token: str | None = None,
                api: HfApi | None = None) -> str:
    """Create ``repo_id`` (if needed) and upload ``best/`` with its card; returns the commit URL.

    A missing token or network becomes one ``HfvisionError`` line; the run dir is left as it was.
    """
    run_dir = Path(run_dir)
    best = run_dir / "best"
    if not (best / "config.json").is_file():
        raise HfvisionError(f"--run: {run_dir} has no best/ model (is it a finished run dir?)")
    if not (best / "README.md").is_file():
        write_model_card(run_dir, repo_id)
    api = api or HfApi()
    try:
        api.create_repo(repo_id, private=private, token=token, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(best), token=token,
                                   commit_message=f"Upload {repo_id} from hfvision run {run_dir.name}")
    except Exception as exc:  # token, network and permission errors come from several libraries
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HfvisionError(f"hub.repo_id: could not push to '{repo_id}': {reason} "
                            f"(log in with `hf auth login` or set HF_TOKEN; nothing was uploaded)") from None
    return getattr(commit, "commit_url", str(commit))
