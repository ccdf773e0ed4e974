"""``hfvision predict``: files, folders and dataset splits to top-k CSV/JSON Lines, bad files named and counted,
the evaluation path's pixels, one output under two processes, and the real ViT-Ti on photos of known labels."""

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, run_cli_in_process, script_command, script_env, tiny_recipe_overrides
from PIL import Image

from hfvision.pipeline import fit
from hfvision.predict import predict
from hfvision.recipe import load_recipe

SAMPLES = REPO.parent / "shared" / "data" / "imagenet-samples"
REAL = {"transformers": REPO.parent / "shared" / "models" / "vit-tiny-patch16-224",
        "timm": REPO.parent / "shared" / "models" / "timm-vit_tiny_patch16_224"}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("predict") / "run"
    fit(load_recipe(REPO / "recipes" / "quickstart.yaml", tiny_recipe_overrides(out, **{"train.epochs": 2})))
    return out


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """Nested folders of photos of mixed sizes and formats, a text file and a truncated JPEG."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    (root / "a" / "b").mkdir(parents=True)
    for i, (size, suffix) in enumerate([((40, 30), ".png"), ((64, 64), ".jpg"), ((20, 50), ".webp"),
                                        ((32, 32), ".png"), ((90, 60), ".jpg")]):
        folder = root if i < 2 else root / "a" if i < 4 else root / "a" / "b"
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"p{i}{suffix}")
    (root / "a" / "notes.txt").write_text("not an image")
    good = (root / "p1.jpg").read_bytes()
    (root / "a" / "b" / "cut.jpg").write_bytes(good[: len(good) // 3])
    (root / ".hidden.png").write_bytes(b"ignored")
    return root


def test_a_folder_is_predicted_recursively_and_bad_files_are_named_and_counted(trained_run, photo_folder, tmp_path,
                                                                              capsys):
    status, out, err = run_cli_in_process(capsys, "predict", "--model", trained_run, photo_folder, "--out",
                                          tmp_path / "p.csv", "--top-k", 3)
    assert status == 0, err
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("predicted 5 image(s); skipped 2 unreadable: ") and "notes.txt" in summary
    assert "cut.jpg" in summary and summary.endswith(f"written to {tmp_path / 'p.csv'}")
    with (tmp_path / "p.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(Path(r["file"]).name for r in rows) == ["p0.png", "p1.jpg", "p2.webp", "p3.png", "p4.jpg"]
    labels = set(json.loads((trained_run / "best" / "config.json").read_text())["id2label"].values())
    for row in rows:
        top = [item.split(":") for item in row["top_k"].split("|")]
        assert len(top) == 3 and top[0][0] == row["label"] in labels
        scores = [float(s) for _, s in top]
        assert scores == sorted(scores, reverse=True) and float(row["score"]) == pytest.approx(scores[0], abs=1e-6)


def test_predictions_are_the_models_output_on_the_evaluation_pixels(trained_run, photo_folder, tmp_path):
    from hfvision.data.images import load_pixels
    from hfvision.data.transforms import BatchPreprocessor
    from hfvision.models.factory import load_model_for_inference

    predictions = predict(str(trained_run), [str(photo_folder / "p0.png"), str(photo_folder / "a" / "b")],
                          out=tmp_path / "p.jsonl", top_k=2, batch_size=2)
    built = load_model_for_inference(str(trained_run))
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["file"] for r in rows] == [r["file"] for r in predictions.rows] and len(rows) == 2
    for row in rows:
        pixels = load_pixels(row["file"], built.spec.decode_size)
        with torch.no_grad():
            probabilities = built.model(pixel_values=BatchPreprocessor(built.spec).resize_and_normalize(
                pixels)).logits.softmax(-1)[0]
        assert row["label"] == built.model.config.id2label[int(probabilities.argmax())]
        assert row["score"] == pytest.approx(float(probabilities.max()), abs=1e-6)
    assert len(predictions.skipped) == 1 and predictions.skipped[0].startswith(str(photo_folder / "a" / "b" / "cut.jpg"))


def test_a_dataset_split_is_predicted_with_the_accuracy_hfvision_evaluate_reports(trained_run):
    predictions = predict(str(trained_run), data="synthetic", split="test", max_samples=100)
    right = sum(r["label"] == r["true_label"] for r in predictions.rows)
    assert len(predictions.rows) == 100 and f"top-1 {right}/100" in predictions.summary()
    from hfvision.pipeline import evaluate_saved_model
    assert right / 100 == evaluate_saved_model(str(trained_run), "synthetic", max_samples=100)["accuracy"]


@pytest.mark.parametrize("args,message", [
    ([], "predict: give image files/folders or --data SOURCE"),
    (["missing.jpg"], "predict: missing.jpg is neither a file nor a folder"),
    (["--out", "p.txt", "x"], "--out: p.txt should end in .csv or .jsonl"),
])
def test_bad_predict_arguments_are_one_line(trained_run, capsys, args, message):
    status, _, err = run_cli_in_process(capsys, "predict", "--model", trained_run, *args)
    assert status == 2 and len(err.strip().splitlines()) == 1 and err.startswith(f"error: {message}"), err


@pytest.mark.slow
def test_two_processes_each_take_a_share_and_one_output_is_written(trained_run, photo_folder, tmp_path):
    out = tmp_path / "p.jsonl"
    result = subprocess.run(script_command("predict", "--model", trained_run, photo_folder, "--out", out, nproc=2),
                            capture_output=True, text=True, cwd=REPO, env=script_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    single = predict(str(trained_run), [str(photo_folder)])
    assert [r["file"] for r in rows] == [r["file"] for r in single.rows]  # every image once, in order
    assert [r["label"] for r in rows] == [r["label"] for r in single.rows]
    assert result.stdout.count("predicted 5 image(s); skipped 2 unreadable") == 1


@pytest.mark.skipif(not SAMPLES.is_dir() or not REAL["transformers"].is_dir(), reason="../shared absent")
@pytest.mark.parametrize("layout", ["transformers", "timm"])
def test_the_real_pretrained_model_names_the_imagenet_photos(layout, tmp_path):
    """15/17 in the transformers layout (squash to 224) and 17/17 in the timm layout (centre crop 0.9), as
    pipeline() gets with each; hfvision's top-1 equals pipeline()'s photo by photo."""
    from transformers import pipeline

    from transformers import AutoConfig

    with (SAMPLES / "labels.csv").open() as f:
        truth = {row["file"]: int(row["label_index"]) for row in csv.DictReader(f)}
    predictions = predict(str(REAL[layout]), [str(SAMPLES / name) for name in truth], out=tmp_path / "p.csv")
    got = {Path(r["file"]).name: r["label"] for r in predictions.rows}
    label2id = {label: int(i) for i, label in AutoConfig.from_pretrained(REAL[layout]).id2label.items()}
    right = sum(label2id[got[name]] == index for name, index in truth.items())
    assert len(predictions.rows) == 17 and right >= (15 if layout == "transformers" else 17), got
    classify = pipeline("image-classification", model=str(REAL[layout]))
    reference = {name: classify(str(SAMPLES / name))[0]["label"] for name in truth}
    assert got == reference


# ------------------------------------------------------------------------------------------ the demo says what it serves


def import_app():
    import sys

    sys.path.insert(0, str(REPO))
    try:
        import app
    finally:
        sys.path.remove(str(REPO))
    return app


def test_the_demo_says_what_it_serves(trained_run, tmp_path):
    app = import_app()
    metrics = json.loads((trained_run / "metrics.json").read_text())
    text = app.describe_model(str(trained_run))
    assert text.startswith(f"**Model:** `{trained_run}` (scratch_vit); **6 classes:** ")
    assert f"**test accuracy** {metrics['test']['accuracy']:.4f} on {metrics['test']['num_samples']:,} images" in text
    assert app.describe_model("someone/not-fetched") == "**Model:** `someone/not-fetched`"


def test_the_demo_serves_an_onnx_export_without_grad_cam(trained_run, photo_folder, tmp_path):
    from hfvision.export import export_onnx

    app = import_app()
    export_onnx(str(trained_run), tmp_path / "onnx", images=[str(photo_folder)])
    assert app.describe_model(str(tmp_path / "onnx")).endswith(
        "an ONNX export run by onnxruntime: no Grad-CAM heat map for exported models")
    app.load.cache_clear()
    labels, heat = app.predict(str(photo_folder / "p0.png"), str(tmp_path / "onnx"))
    torch_labels, torch_heat = app.predict(str(photo_folder / "p0.png"), str(trained_run))
    app.load.cache_clear()
    assert heat is None and torch_heat is not None
    assert list(labels) == list(torch_labels)
    for name in labels:
        assert labels[name] == pytest.approx(torch_labels[name], abs=1e-5)


@pytest.mark.skipif(not REAL["transformers"].is_dir(), reason="../shared absent")
@pytest.mark.parametrize("layout", ["transformers", "timm"])
def test_the_demo_describes_and_serves_the_real_model_in_both_layouts(layout):
    app = import_app()
    text = app.describe_model(str(REAL[layout]))
    assert "**1000 classes:** tench" in text and ("vit_tiny_patch16_224" in text if layout == "timm" else "(vit)" in text)
    app.load.cache_clear()
    labels, heat = app.predict(str(SAMPLES / "n01514668_10054.JPEG"), str(REAL[layout]))
    app.load.cache_clear()
    assert len(labels) == 5 and heat is not None
