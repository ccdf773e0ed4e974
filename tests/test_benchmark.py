"""scripts/benchmark.py runs its comparisons end to end (tiny sizes) and writes the tables and numbers."""

import json
import subprocess
import sys

import pytest
from conftest import REPO, script_env


@pytest.mark.slow
def test_train_step_and_input_pipeline_comparisons_write_their_results(tmp_path):
    command = [sys.executable, str(REPO / "scripts" / "benchmark.py"), "--train-step", "--input-pipeline",
               "--rounds", "1", "--steps", "1", "--train-step-batch", "4", "--pipeline-images", "64",
               "--workers", "1", "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=900, env=script_env())
    assert result.returncode == 0, result.stderr[-3000:]
    train_step = json.loads((tmp_path / "train_step_cpu.json").read_text())
    for shape in train_step["results"].values():
        params = {row["parameters"] for row in shape.values()}
        assert len(shape) == 3 and len(params) == 1  # three libraries, one parameter count
    pipeline = json.loads((tmp_path / "input_pipeline_cpu.json").read_text())
    assert set(pipeline["results"]) == {"32", "224"} and pipeline["results"]["224"]["ratio_to_best_per_sample"] > 0
    assert len(pipeline["results"]["224"]["images_per_second"]) == 6  # hfvision, floor, 3 per-sample, 1-thread hfvision
    assert pipeline["results"]["224"]["floor_to_best_per_sample"] > 0
    for name in ("train_step_cpu.md", "input_pipeline_cpu.md"):
        text = (tmp_path / name).read_text()
        assert "torch" in text and "Command: `python scripts/benchmark.py --train-step" in text and "| --- |" in text


@pytest.mark.slow
def test_the_onnx_comparison_writes_torch_fp32_and_int8_rows(tmp_path):
    from conftest import tiny_recipe_overrides

    from hfvision.pipeline import fit
    from hfvision.recipe import load_recipe

    run = tmp_path / "run"
    fit(load_recipe(REPO / "recipes" / "quickstart.yaml", tiny_recipe_overrides(run)))
    command = [sys.executable, str(REPO / "scripts" / "benchmark.py"), "--onnx", str(run), "--onnx-data", "synthetic",
               "--onnx-test-images", "64", "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=900, env=script_env())
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "onnx_cpu.json").read_text())["reports"][str(run)]
    assert report["fp32"]["max_abs_logit_difference"] <= 1e-4 and report["validated_on"] == 64
    assert report["fp32"]["accuracy"] == report["torch_reference"]["accuracy"]
    text = (tmp_path / "onnx_cpu.md").read_text()
    assert text.count(f"| {run} | batch ") == 2 and "ORT int8 img/s" in text
    assert "load average (1 / 5 / 15 min) " in text
    assert len(json.loads((tmp_path / "onnx_cpu.json").read_text())["load_average_1_5_15_min"]["after"]) == 3
