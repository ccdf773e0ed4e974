"""hfvision demo: top-5 classes and a Grad-CAM overlay for an uploaded image.

    python app.py --model runs/quickstart            # a run dir (uses best/), a model dir or a Hub id
    HFVISION_MODEL=your-name/your-model python app.py

``demo`` is built at import (so Spaces can run this file as is, and tests can import it); it is launched
only under ``__main__``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import gradio as gr
import numpy as np
import torch
import yaml
from PIL import Image

from hfvision.data.sources import load_eval_split
from hfvision.data.transforms import BatchPreprocessor
from hfvision.errors import HfvisionError
from hfvision.explain.api import first_index_per_class, heatmaps
from hfvision.explain.figures import overlay, to_rgb
from hfvision.models.factory import load_model_for_inference

DEFAULT_MODEL = os.environ.get("HFVISION_MODEL", "runs/quickstart")
DISPLAY_SIZE = 256
_loaded: dict = {}


def load(model_name: str):
    """The model for ``model_name``, loaded once per process, on the GPU when there is one."""
    if model_name not in _loaded:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        _loaded[model_name] = load_model_for_inference(model_name, device)
    return _loaded[model_name]


def image_to_tensor(image, size: int) -> torch.Tensor:
    """Any PIL/numpy image (grayscale, RGBA, tiny or huge) -> RGB uint8 (1, 3, size, size)."""
    if image is None:
        raise gr.Error("Upload an image first.")
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    image = image.convert("RGB").resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].contiguous()


def predict(image, model_name: str = DEFAULT_MODEL):
    """Top-5 {label: probability} and the Grad-CAM overlay of the predicted class."""
    try:
        built = load(model_name)
    except HfvisionError as exc:
        raise gr.Error(str(exc)) from None
    pixels = image_to_tensor(image, built.spec.image_size)
    with torch.no_grad():
        device = next(built.model.parameters()).device
        logits = built.model(pixel_values=BatchPreprocessor(built.spec).resize_and_normalize(pixels.to(device))).logits
    probabilities = logits.softmax(dim=-1)[0].cpu()
    top = probabilities.topk(min(5, probabilities.numel()))
    labels = {built.model.config.id2label[int(i)]: float(p) for p, i in zip(top.values, top.indices)}
    heat, _, normalised = heatmaps(built.model, built.spec, pixels)
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


def build_demo(model_name: str = DEFAULT_MODEL) -> gr.Blocks:
    with gr.Blocks(title="hfvision demo") as demo:
        gr.Markdown("# hfvision demo\nUpload an image: the model's top-5 classes and a Grad-CAM heat map of "
                    "where it looked for the predicted class.")
        model_box = gr.Textbox(value=model_name, label="Model (run dir, model dir or Hub id)")
        with gr.Row():
            image = gr.Image(type="pil", label="Image", image_mode="RGB", elem_id="input-image")
            with gr.Column():
                labels = gr.Label(num_top_classes=5, label="Top-5 classes", elem_id="labels")
                heat = gr.Image(type="pil", label="Grad-CAM (predicted class)", elem_id="gradcam")
        button = gr.Button("Classify", variant="primary", elem_id="classify")
        button.click(predict, inputs=[image, model_box], outputs=[labels, heat], api_name="predict")
        examples = example_images(model_name, Path(tempfile.mkdtemp(prefix="hfvision-examples-")))
        if examples:
            gr.Examples(examples=examples, inputs=image, label="Examples from the run's test split")
    return demo


demo = build_demo(DEFAULT_MODEL)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="hfvision Gradio demo")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="run dir, model dir or Hub id")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args()
    if args.model != DEFAULT_MODEL:
        demo = build_demo(args.model)
    try:
        load(args.model)  # fail early, in one line, when the model cannot be loaded
    except HfvisionError as exc:
        raise SystemExit(f"error: {exc}") from None
    demo.launch(server_name=args.host, server_port=args.port)
