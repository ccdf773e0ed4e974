import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, tiny_recipe_overrides
from huggingface_hub import ModelCard
from PIL import Image

from hfvision.data.synthetic import CLASSES, make_images
from hfvision.errors import HfvisionError
from hfvision.hub import push_to_hub
from hfvision.recipe import load_recipe
from hfvision.pipeline import fit

ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("share") / "run"
    fit(load_recipe(REPO / "recipes" / "quickstart.yaml",
                    tiny_recipe_overrides(out, **{"data.max_train_samples": 600, "train.epochs": 3, "eval.explain": True})))
    return out


@pytest.fixture(scope="module")
def sample_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "shape.png"
    Image.fromarray(make_images(1, seed=11)[0][0]).save(path)
    return path


def digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.slow
def test_best_dir_works_without_hfvision_and_in_a_pipeline(run_dir, sample_image, tmp_path):
    from transformers import AutoModelForImageClassification

    best = run_dir / "best"
    model = AutoModelForImageClassification.from_pretrained(best).eval()
    pixels = torch.randn(2, 3, 32, 32)
    torch.save(pixels, tmp_path / "pixels.pt")
    torch.save(model(pixel_values=pixels).logits.detach(), tmp_path / "logits.pt")
    code = f"""
import sys, torch
sys.modules['hfvision'] = None
from transformers import AutoModelForImageClassification, pipeline
model = AutoModelForImageClassification.from_pretrained({str(best)!r}, trust_remote_code=True).eval()
torch.testing.assert_close(model(pixel_values=torch.load({str(tmp_path / 'pixels.pt')!r})).logits,
                           torch.load({str(tmp_path / 'logits.pt')!r}), rtol=0, atol=0)
classifier = pipeline("image-classification", model={str(best)!r}, trust_remote_code=True)
print(classifier({str(sample_image)!r})[0]["label"])
"""
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    label = result.stdout.strip().splitlines()[-1]
    assert label == CLASSES[make_images(1, seed=11)[1][0]]  # the right class, by name


@pytest.mark.slow
def test_model_card_metadata_parses(run_dir):
    card = ModelCard.load(run_dir / "best" / "README.md")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert card.data.pipeline_tag == "image-classification" and card.data.library_name == "transformers"
    assert "hfvision" in card.data.tags
    accuracy = next(r for r in card.data.eval_results if r.metric_type == "accuracy")
    assert accuracy.metric_value == metrics["test"]["accuracy"]
    assert "## Recipe" in card.text and "![confusion matrix](confusion_matrix.png)" in card.text
    assert (run_dir / "best" / "confusion_matrix.png").is_file()


class RecordingApi:
    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        return type("Commit", (), {"commit_url": f"https://hub.example/{kwargs['repo_id']}/commit/1"})()


@pytest.mark.slow
def test_push_uploads_best_with_its_card(run_dir):
    api = RecordingApi()
    url = push_to_hub(run_dir, "someone/scratch-vit-shapes", private=True, token="hf_x", api=api)
    assert url == "https://hub.example/someone/scratch-vit-shapes/commit/1"
    assert api.calls[0] == ("create_repo", "someone/scratch-vit-shapes", {"private": True, "token": "hf_x", "exist_ok": True})
    name, upload = api.calls[1]
    assert name == "upload_folder" and upload["repo_id"] == "someone/scratch-vit-shapes"
    assert upload["folder_path"] == str(run_dir / "best") and upload["token"] == "hf_x"
    assert {"README.md", "model.safetensors", "config.json", "preprocessor_config.json"} <= set(
        os.listdir(upload["folder_path"]))


@pytest.mark.slow
def test_push_without_network_is_one_line_and_keeps_the_run(run_dir):
    before = digest(run_dir / "best")
    with pytest.raises(HfvisionError) as info:
        push_to_hub(run_dir, "someone/x")  # HF_HUB_OFFLINE=1: the real client refuses at once
    assert "could not push to 'someone/x'" in str(info.value) and "\n" not in str(info.value)
    assert digest(run_dir / "best") == before
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "push_to_hub.py"), "--run", str(run_dir),
                             "--repo-id", "someone/x"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 2 and result.stderr.strip().startswith("error: hub.repo_id: could not push")


@pytest.mark.slow
def test_training_pushes_when_the_recipe_asks(tmp_path, monkeypatch):
    import hfvision.pipeline as run_module

    pushed = []
    monkeypatch.setattr(run_module, "push_to_hub", lambda run, repo, private: pushed.append((run, repo, private)) or "url")
    out = tmp_path / "run"
    fit(load_recipe(REPO / "recipes" / "quickstart.yaml",
                    tiny_recipe_overrides(out, **{"hub.push": True, "hub.repo_id": "me/demo", "hub.private": True})))
    assert pushed == [(out, "me/demo", True)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def demo_app(run_dir):
    previous = os.environ.get("HFVISION_MODEL")
    os.environ["HFVISION_MODEL"] = str(run_dir)
    sys.path.insert(0, str(REPO))
    import importlib

    import app
    app = importlib.reload(app)
    port = free_port()
    app.demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield app, f"http://127.0.0.1:{port}/"
    app.demo.close()
    if previous is None:
        os.environ.pop("HFVISION_MODEL", None)
    else:
        os.environ["HFVISION_MODEL"] = previous


@pytest.mark.slow
def test_demo_predict_handles_odd_images(demo_app):
    app, _ = demo_app
    rgb = make_images(1, seed=11)[0][0]
    for image in (Image.fromarray(rgb).convert("L"), Image.fromarray(rgb).convert("RGBA"),
                  Image.fromarray(rgb).resize((3, 3)), Image.fromarray(rgb).resize((2048, 1536))):
        labels, heat = app.predict(image, str(app.DEFAULT_MODEL))
        assert len(labels) == 5 and 0 < sum(labels.values()) <= 1 + 1e-6
        assert heat.size == (app.DISPLAY_SIZE, app.DISPLAY_SIZE)
    import gradio as gr
    with pytest.raises(gr.Error, match="Upload an image first"):
        app.predict(None)


@pytest.mark.slow
def test_demo_answers_gradio_client_like_the_model(demo_app, run_dir, sample_image):
    from gradio_client import Client, handle_file
    from transformers import pipeline

    app, url = demo_app
    client = Client(url, verbose=False)
    labels, _ = client.predict(handle_file(str(sample_image)), str(run_dir), api_name="/predict")
    classifier = pipeline("image-classification", model=str(run_dir / "best"))
    assert labels["label"] == classifier(str(sample_image))[0]["label"]


@pytest.mark.slow
def test_demo_in_headless_chromium(demo_app, sample_image):
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    _, url = demo_app
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                          "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(url, wait_until="networkidle")
        page.locator("#input-image input[type=file]").set_input_files(str(sample_image))
        page.locator("#input-image img").first.wait_for(timeout=30_000)
        page.locator("#classify").click()
        expected = CLASSES[make_images(1, seed=11)[1][0]]
        page.locator("#labels").get_by_text(expected).first.wait_for(timeout=60_000)
        page.locator("#gradcam img").first.wait_for(timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "demo.png"), full_page=True)
        browser.close()
    assert (ARTIFACTS / "demo.png").stat().st_size > 20_000
