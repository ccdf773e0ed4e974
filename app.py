"""hfvision demo: top-5 classes and a Grad-CAM overlay for an uploaded image.

    python app.py --model runs/quickstart            # a run dir (uses best/), a model dir or a Hub id
    HFVISION_MODEL=your-name/your-model python app.py
    python app.py --model runs/quickstart --allow-model-choice --model-root runs   # local use: pick a model

The operator fixes the model (``--model`` or ``HFVISION_MODEL``); visitors only send images. With
``--allow-model-choice`` a model box appears, limited to run/model dirs under ``--model-root`` and Hub ids;
anything else (an absolute path, ``..``, a symlink out of the root) gets one message that does not say
whether the path exists. Hub ids in the box are fetched from the Hub (or its cache), never read as local paths.
Up to ``MODEL_CACHE_SIZE`` models stay loaded (least recently used first out).

Host and port: ``--host``/``--port`` when given, else Gradio's ``GRADIO_SERVER_NAME``/``GRADIO_SERVER_PORT``
(a Space sets 0.0.0.0:7860), else 127.0.0.1 and the first free port from 7860.

``demo`` is built at import (so Spaces can run this file as is, and tests can import it); it is launched
only under ``__main__``. Uploads are decoded by ``hfvision.data.images`` (the data path's decoder and resize),
so the model sees the pixels it would see in a dataset, and a file that is not an image gets a readable message.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
from pathlib import Path

import gradio as gr
import numpy as np
import torch
import yaml
from PIL import Image
from transformers import AutoConfig

from hfvision.data.images import UnreadableImage, load_pixels
from hfvision.data.sources import load_eval_split
from hfvision.data.transforms import BatchPreprocessor
from hfvision.errors import HfvisionError
from hfvision.export import is_onnx_dir, load_onnx_for_inference
from hfvision.explain.api import METHODS, first_index_per_class, heatmaps
from hfvision.explain.figures import overlay, to_rgb
from hfvision.models.factory import load_model_for_inference, resolve_model_path

DEFAULT_MODEL = os.environ.get("HFVISION_MODEL", "runs/quickstart")
DISPLAY_SIZE = 256
MODEL_CACHE_SIZE = 3
NOT_ALLOWED = "model: only run or model dirs under the model root and Hub ids (owner/name) can be loaded here"
MAX_NAME_LENGTH = 200  # Hub ids are at most 96 characters; a longer name is neither an id nor a dir we serve
HUB_FILES = ["*.json", "*.safetensors"]  # config, processor config and weights: enough for from_pretrained


@functools.lru_cache(maxsize=MODEL_CACHE_SIZE)
def load(model_name: str):
    """The model for ``model_name``, on the GPU when there is one; the last few stay loaded."""
    if is_onnx_dir(model_name):  # an ``hfvision export`` dir: onnxruntime, no Grad-CAM
        return load_onnx_for_inference(model_name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return load_model_for_inference(model_name, device)


def describe_model(model_name: str) -> str:
    """What the demo serves, in Markdown, read from the files (the model is not loaded for it): the name, the
    architecture and classes, the run's test accuracy when ``model_name`` is a run dir, and whether heat maps
    are shown (not for an ONNX export)."""
    text = f"**Model:** `{model_name}`"
    try:  # the config alone (either layout: transformers' id2label, timm's label_names)
        config = AutoConfig.from_pretrained(resolve_model_path(model_name), trust_remote_code=False)
        labels = [config.id2label[i] for i in range(config.num_labels)]
    except (OSError, ValueError, KeyError):
        return text  # a Hub id not fetched yet, or a dir the loader will name the problem of
    shown = ", ".join(labels[:10]) + (f", ... ({len(labels)} in all)" if len(labels) > 10 else "")
    kind = getattr(config, "architecture", None) or config.model_type
    text += f" ({kind}); **{len(labels)} classes:** {shown}"
    metrics_file = Path(model_name) / "metrics.json"
    if metrics_file.is_file():
        try:
            test = json.loads(metrics_file.read_text())["test"]
            text += f"; **test accuracy** {test['accuracy']:.4f} on {test['num_samples']:,} images (this run's metrics.json)"
        except (OSError, ValueError, KeyError, TypeError):
            pass
    if is_onnx_dir(model_name):
        text += "; an ONNX export run by onnxruntime: no Grad-CAM heat map for exported models"
    return text


def choose_model(name: str, model_root: Path) -> str:
    """A model name typed by a visitor -> what ``load`` may open: a dir under ``model_root`` or a Hub snapshot.

    A name that would leave the root (absolute, ``~``, ``..``, or a symlink whose target is outside) raises
    ``NOT_ALLOWED`` whether or not it exists; a name that is not under the root is only ever a Hub id."""
    name = (name or "").strip()
    if len(name) > MAX_NAME_LENGTH:
        raise HfvisionError(f"model: a name of at most {MAX_NAME_LENGTH} characters (a run dir under the model root "
                            f"or a Hub id), got {len(name):,}")
    parts = Path(name).parts
    if not name or Path(name).is_absolute() or name.startswith("~") or ".." in parts:
        raise HfvisionError(NOT_ALLOWED)
    root = model_root.resolve()
    try:
        candidate = (root / name).resolve()  # follows symlinks: an escape shows up here
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
        raise HfvisionError(NOT_ALLOWED) from None
    if not candidate.is_relative_to(root):
        raise HfvisionError(NOT_ALLOWED)
    try:
        if candidate.exists():
            return str(candidate)
    except OSError:  # a name the file system refuses (too long a component)
        raise HfvisionError(NOT_ALLOWED) from None
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise HfvisionError(NOT_ALLOWED) from None
    try:
        return snapshot_download(name, allow_patterns=HUB_FILES)
    except Exception:  # offline, missing, private, gated: the visitor needs the name, not the client's stack
        raise HfvisionError(f"model: could not load '{name}' from the Hub") from None


def image_to_tensor(image, size: int, crop_pct: float | None = None) -> torch.Tensor:
    """An upload (Gradio file payload, path, PIL image or array; any mode or size) -> RGB uint8 (1, 3, size, size),
    decoded and resized as the data path does."""
    if isinstance(image, dict):  # the Image component's payload, unprocessed: hfvision decodes the file itself
        name, image = image.get("orig_name") or "the upload", image.get("path")
    else:
        name = "the upload"
    if image is None:
        raise gr.Error("Upload an image first.")
    try:
        return load_pixels(image, size, name, crop_pct)
    except UnreadableImage as exc:
        raise gr.Error(f"Could not read {exc}; please upload a JPEG, PNG, WebP or similar image.") from None


def predict(image, model_name: str = DEFAULT_MODEL, method: str = "gradcam"):
    """Top-5 {label: probability} and the heat-map overlay (``method``: one of ``METHODS``) of the predicted
    class."""
    if image is None:
        raise gr.Error("Upload an image first.")
    try:
        built = load(model_name)
    except HfvisionError as exc:
        raise gr.Error(str(exc)) from None
    pixels = image_to_tensor(image, built.spec.image_size, built.spec.crop_pct)
    with torch.no_grad():
        device = next(built.model.parameters()).device if isinstance(built.model, torch.nn.Module) else "cpu"
        logits = built.model(pixel_values=BatchPreprocessor(built.spec).resize_and_normalize(pixels.to(device))).logits
    probabilities = logits.softmax(dim=-1)[0].cpu()
    top = probabilities.topk(min(5, probabilities.numel()))
    labels = {built.model.config.id2label[int(i)]: float(p) for p, i in zip(top.values, top.indices)}
    if not isinstance(built.model, torch.nn.Module):  # an ONNX export: no gradients to explain with
        return labels, None
    if method not in METHODS:
        raise gr.Error(f"Heat map: '{method}' is not one of {', '.join(METHODS)}.")
    try:
        heat, _, normalised = heatmaps(built.model, built.spec, pixels, method)
    except ValueError as exc:  # rollout on a model without global attention
        raise gr.Error(f"Heat map: {exc}.") from None
    blended = overlay(to_rgb(normalised, built.spec)[0], heat[0])
    shown = Image.fromarray((blended * 255).astype(np.uint8)).resize((DISPLAY_SIZE, DISPLAY_SIZE), Image.NEAREST)
    return labels, shown


def example_images(model_name: str, folder: Path) -> list[str]:
    """One test image per class from the run's dataset, when ``model_name`` is a run dir whose data loads."""
    recipe_file = Path(model_name) / "recipe.yaml"
    if not recipe_file.is_file():
        return []
    try:
        dataset = yaml.safe_load(recipe_file.read_text())["data"]["dataset"]
        split, label_names = load_eval_split(dataset, "test", None, max_samples=2000)
    except (HfvisionError, KeyError, OSError):
        return []
    paths = []
    for index in first_index_per_class(split.labels, len(label_names)):
        path = folder / f"{label_names[int(split.labels[index])]}.png"
        Image.fromarray(split.pixels[index].permute(1, 2, 0).numpy()).save(path)
        paths.append(str(path))
    return paths


def build_demo(model_name: str = DEFAULT_MODEL, model_root: Path | None = None) -> gr.Blocks:
    """The app serving ``model_name``; with ``model_root``, a model box limited to that root and Hub ids."""
    with gr.Blocks(title="hfvision demo") as demo:
        gr.Markdown("# hfvision demo\nUpload an image: the model's top-5 classes and a heat map of where it "
                    "looked for the predicted class (Grad-CAM, attention rollout, Score-CAM or occlusion).")
        gr.Markdown(describe_model(model_name), elem_id="model-info")
        if model_root is not None:
            model_box = gr.Textbox(value=model_name, label="Model (a run dir under the model root, or a Hub id)")
        with gr.Row():
            image = gr.Image(type="filepath", label="Image", elem_id="input-image")
            with gr.Column():
                labels = gr.Label(num_top_classes=5, label="Top-5 classes", elem_id="labels")
                heat = gr.Image(type="pil", label="Heat map (predicted class)", elem_id="gradcam")
        method = gr.Radio(list(METHODS), value="gradcam", label="Heat map", elem_id="method")
        button = gr.Button("Classify", variant="primary", elem_id="classify")
        if model_root is None:
            def classify(upload, method_name):
                return predict(upload, model_name, method_name)
            inputs = [image, method]
        else:
            def classify(upload, choice, method_name):
                try:
                    chosen = model_name if choice == model_name else choose_model(choice, model_root)
                except HfvisionError as exc:
                    raise gr.Error(str(exc)) from None
                try:
                    load(chosen)
                except Exception:  # noqa: BLE001 -- not a classifier dir, damaged weights, ...: one line, and
                    # the visitor's name, not the resolved server path or a library's stack
                    raise gr.Error(f"model: could not load '{choice}' as an image classifier") from None
                return predict(upload, chosen, method_name)
            inputs = [image, model_box, method]
        # preprocess=False: the upload reaches ``predict`` as Gradio's file payload (already checked to be in
        # Gradio's upload cache) and is decoded by hfvision, so a non-image gets our message, not a stack trace
        button.click(classify, inputs=inputs, outputs=[labels, heat], api_name="predict", preprocess=False)
        examples = example_images(model_name, Path(tempfile.mkdtemp(prefix="hfvision-examples-")))
        if examples:
            gr.Examples(examples=examples, inputs=image, label="Examples from the run's test split")
    return demo


demo = build_demo(DEFAULT_MODEL)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="hfvision Gradio demo")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="run dir, model dir or Hub id (default: $HFVISION_MODEL)")
    parser.add_argument("--host", default=None, help="default: $GRADIO_SERVER_NAME, else 127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="default: $GRADIO_SERVER_PORT, else 7860 or the next free")
    parser.add_argument("--allow-model-choice", action="store_true",
                        help="show a model box (local use): run dirs under --model-root and Hub ids")
    parser.add_argument("--model-root", type=Path, default=None, help="the folder --allow-model-choice may load from")
    args = parser.parse_args(argv)
    if args.allow_model_choice != (args.model_root is not None):
        raise SystemExit("error: --allow-model-choice and --model-root DIR go together")
    if args.model_root is not None and not args.model_root.is_dir():
        raise SystemExit(f"error: --model-root: {args.model_root} is not a directory")
    try:
        load(args.model)  # fail early, in one line, when the model cannot be loaded
    except HfvisionError as exc:
        raise SystemExit(f"error: {exc}") from None
    app = demo if args.model == DEFAULT_MODEL and args.model_root is None else build_demo(args.model, args.model_root)
    given = {"server_name": args.host, "server_port": args.port}
    app.launch(**{key: value for key, value in given.items() if value is not None})  # else Gradio's env handling


if __name__ == "__main__":
    main(sys.argv[1:])
