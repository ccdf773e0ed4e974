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
    result = subprocess.run([sys.executable, "-m", "hfvision", "push", "--run", str(run_dir),
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
    labels, _ = client.predict(handle_file(str(sample_image)), api_name="/predict")  # the model is the operator's
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


def import_app():
    sys.path.insert(0, str(REPO))
    import app
    return app


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    """root/m1 (a tiny untrained model dir) and, outside the root, outside/m (another) with root/escape -> outside/m
    and root/dangling -> outside/missing; a sample image and a text file renamed .png."""
    from transformers import ViTImageProcessor

    from hfvision import ScratchViTConfig, ScratchViTForImageClassification

    base = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    model = ScratchViTForImageClassification(ScratchViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        num_labels=len(CLASSES), id2label=dict(enumerate(CLASSES)), label2id={c: i for i, c in enumerate(CLASSES)}))
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    for folder in (base / "root" / "m1", base / "outside" / "m"):
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
    (base / "root" / "escape").symlink_to(base / "outside" / "m")
    (base / "root" / "dangling").symlink_to(base / "outside" / "missing")
    Image.fromarray(make_images(1, 40, seed=5)[0][0]).save(base / "shape.png")
    (base / "notes.png").write_text("not an image, just a renamed text file\n")
    return base


def test_model_choice_stays_under_the_root_and_says_the_same_for_existing_and_missing(model_root, monkeypatch):
    app = import_app()
    root = model_root / "root"
    fetched = []
    monkeypatch.setattr("huggingface_hub.snapshot_download",
                        lambda name, allow_patterns: fetched.append(name) or f"/hub-cache/{name}")
    assert app.choose_model("m1", root) == str((root / "m1").resolve())
    for existing, missing in [(str(model_root / "outside" / "m"), str(model_root / "outside" / "missing")),
                              ("../outside/m", "../outside/missing"), ("escape", "dangling"),
                              ("m1/../../outside/m", "m1/../../outside/missing"), ("~/.bashrc", "~/missing")]:
        for name in (existing, missing):
            with pytest.raises(HfvisionError) as info:
                app.choose_model(name, root)
            assert str(info.value) == app.NOT_ALLOWED, name
    assert fetched == []
    # a name that is not under the root is only ever a Hub id, even when it exists relative to the server's cwd
    monkeypatch.chdir(REPO)
    assert app.choose_model("tests/conftest.py", root) == "/hub-cache/tests/conftest.py"
    assert app.choose_model("owner/model", root) == "/hub-cache/owner/model" and fetched == ["tests/conftest.py",
                                                                                            "owner/model"]
    with pytest.raises(HfvisionError) as info:
        app.choose_model("a/b/c", root)  # neither under the root nor a Hub id
    assert str(info.value) == app.NOT_ALLOWED


def test_demo_decodes_uploads_as_the_data_path_does(model_root):
    from hfvision.data.images import load_pixels

    app = import_app()
    upload = {"path": str(model_root / "shape.png"), "orig_name": "shape.png"}  # Gradio's payload, unprocessed
    torch.testing.assert_close(app.image_to_tensor(upload, 32), load_pixels(model_root / "shape.png", 32), rtol=0, atol=0)


def test_loaded_models_are_a_bounded_lru_cache(monkeypatch):
    app = import_app()
    loads = []
    monkeypatch.setattr(app, "load_model_for_inference", lambda name, device: loads.append(name) or name)
    app.load.cache_clear()
    for name in ("a", "b", "c", "a", "d", "a", "b"):  # d evicts b (least recently used), not a
        app.load(name)
    assert loads == ["a", "b", "c", "d", "b"] and app.load.cache_info().currsize == app.MODEL_CACHE_SIZE == 3
    app.load.cache_clear()


@pytest.mark.slow
def test_demo_model_box_refuses_paths_outside_the_root_and_keeps_serving(model_root, monkeypatch):
    from gradio_client import Client, handle_file

    app = import_app()
    app.load.cache_clear()
    opened = []
    real = app.load_model_for_inference
    monkeypatch.setattr(app, "load_model_for_inference", lambda name, device: opened.append(name) or real(name, device))
    demo = app.build_demo(str(model_root / "root" / "m1"), model_root / "root")
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        image = handle_file(str(model_root / "shape.png"))
        expected = client.predict(image, "m1", api_name="/predict")[0]["label"]
        for name in (str(model_root / "outside" / "m"), str(model_root / "outside" / "missing"), "../outside/m",
                     "../outside/missing", "escape", "dangling"):
            with pytest.raises(Exception) as info:
                client.predict(image, name, api_name="/predict")
            assert str(info.value) == app.NOT_ALLOWED, name
            assert client.predict(image, "m1", api_name="/predict")[0]["label"] == expected  # still serving
        with pytest.raises(Exception, match="^Could not read notes.png: not an image file PIL can read; please upload"):
            client.predict(handle_file(str(model_root / "notes.png")), "m1", api_name="/predict")
        assert client.predict(image, "m1", api_name="/predict")[0]["label"] == expected
        assert opened == [str((model_root / "root" / "m1").resolve())]  # nothing outside the root was opened
    finally:
        demo.close()
        app.load.cache_clear()


@pytest.mark.slow
def test_demo_script_takes_host_and_port_from_gradio_env_and_serves_only_its_model(model_root, tmp_path):
    import select
    import time

    from gradio_client import Client, handle_file

    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "HFVISION_MODEL": str(model_root / "root" / "m1"), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([sys.executable, str(REPO / "app.py")], cwd=tmp_path, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output, deadline = "", time.monotonic() + 240
        while "Running on local URL" not in output and time.monotonic() < deadline and server.poll() is None:
            if select.select([server.stdout], [], [], 1.0)[0]:
                output += server.stdout.readline()
        assert f"Running on local URL:  http://127.0.0.1:{port}" in output, output[-2000:]
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        parameters = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/predict"]["parameters"]
        assert [p["parameter_name"] for p in parameters] == ["upload", "method_name"]  # no model input: the operator fixed it
        image = handle_file(str(model_root / "shape.png"))
        expected = client.predict(image, api_name="/predict")[0]["label"]
        with pytest.raises(Exception, match="^Could not read notes.png: not an image file PIL can read"):
            client.predict(handle_file(str(model_root / "notes.png")), api_name="/predict")
        assert client.predict(image, api_name="/predict")[0]["label"] == expected
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_demo_flags_need_each_other(model_root):
    app = import_app()
    for flags in (["--allow-model-choice"], ["--model-root", str(model_root / "root")]):
        with pytest.raises(SystemExit, match="^error: --allow-model-choice and --model-root DIR go together$"):
            app.main(["--model", str(model_root / "root" / "m1"), *flags])
