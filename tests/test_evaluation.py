import json
import subprocess

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, run_cli_in_process, script_command, script_env
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, top_k_accuracy_score

from hfvision import ScratchViTConfig, ScratchViTForImageClassification
from hfvision.data.synthetic import CLASSES
from hfvision.evaluation.compare import write_run_comparison
from hfvision.evaluation.metrics import ClassificationMetrics, TopKAccuracy
from hfvision.evaluation.profile import flop_counter, flops_per_image, inference_latency, model_profile


def check_against_sklearn(logits: np.ndarray, labels: np.ndarray, num_labels: int, batches: int = 3):
    metrics = ClassificationMetrics([f"c{i}" for i in range(num_labels)])
    for part in np.array_split(np.arange(len(labels)), batches):  # streamed in uneven batches
        metrics.add_batch(logits[part], labels[part])
    result = metrics.compute()
    predictions = logits.argmax(1)
    classes = list(range(num_labels))
    assert result["accuracy"] == pytest.approx(accuracy_score(labels, predictions))
    assert result["confusion_matrix"] == confusion_matrix(labels, predictions, labels=classes).tolist()
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(labels, predictions, labels=classes, average=average, zero_division=0)
        assert (result[f"{average}_precision"], result[f"{average}_recall"], result[f"{average}_f1"]) == \
            pytest.approx((p, r, f))
    p, r, f, support = precision_recall_fscore_support(labels, predictions, labels=classes, zero_division=0)
    per_class = list(result["per_class"].values())
    assert [row["precision"] for row in per_class] == pytest.approx(p.tolist())
    assert [row["recall"] for row in per_class] == pytest.approx(r.tolist())
    assert [row["f1"] for row in per_class] == pytest.approx(f.tolist())
    assert [row["support"] for row in per_class] == support.tolist()
    if num_labels > 5:
        assert result["top5_accuracy"] == pytest.approx(top_k_accuracy_score(labels, logits, k=5, labels=classes))


@settings(max_examples=60, deadline=None)
@given(st.integers(3, 12).flatmap(lambda k: st.tuples(
    st.just(k),
    st.lists(st.tuples(st.integers(0, k - 1), st.lists(st.integers(-2, 2), min_size=k, max_size=k)),
             min_size=1, max_size=60))))
def test_metrics_equal_sklearn_on_random_inputs_with_ties(case):
    num_labels, rows = case
    labels = np.array([r[0] for r in rows])
    logits = np.array([r[1] for r in rows], dtype=np.float32)  # small integer scores: many ties
    check_against_sklearn(logits, labels, num_labels, batches=min(3, len(rows)))


@pytest.mark.parametrize("case", ["all_one_class", "missing_classes", "all_wrong", "all_tied"])
def test_metrics_equal_sklearn_on_adversarial_inputs(case):
    rng = np.random.default_rng(0)
    num_labels, n = 10, 50
    labels = rng.integers(0, num_labels, n)
    logits = rng.normal(size=(n, num_labels)).astype(np.float32)
    if case == "all_one_class":
        labels[:] = 3
        logits[:, 3] += 1.0
    elif case == "missing_classes":
        labels = rng.integers(0, 4, n)
    elif case == "all_wrong":
        logits[np.arange(n), labels] = -10
    elif case == "all_tied":
        logits[:] = 0.0
    check_against_sklearn(logits, labels, num_labels)


def test_metric_modules_stream_and_combine():
    import evaluate

    from hfvision.evaluation.metrics import Accuracy, ConfusionMatrix

    combined = evaluate.combine([Accuracy(keep_in_memory=True), ConfusionMatrix(keep_in_memory=True)])
    combined.add_batch(predictions=[0, 1], references=[0, 0])
    combined.add_batch(predictions=[1], references=[1])
    result = combined.compute(num_labels=2)
    assert result["accuracy"] == pytest.approx(2 / 3) and result["confusion_matrix"] == [[1, 1], [0, 1]]
    topk = TopKAccuracy(keep_in_memory=True)
    topk.add_batch(predictions=[[0.1, 0.5, 0.4], [0.9, 0.05, 0.05]], references=[2, 1])
    assert topk.compute(k=2) == {"top2_accuracy": 0.5}


def tiny_vit(patch=8, **fields):
    config = dict(image_size=32, patch_size=patch, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, num_labels=5)
    config.update(fields)
    return ScratchViTForImageClassification(ScratchViTConfig(**config))


def test_flops_match_a_hand_count_for_a_tiny_vit():
    n, d, inner, layers, patch = 17, 32, 64, 2, 8  # 16 patches + CLS; head count does not change FLOPs
    patch_embed = 16 * (3 * patch * patch) * d
    per_layer = n * d * 3 * d + 2 * n * n * d + n * d * d + 2 * n * d * inner  # qkv, QK^T and AV, proj, MLP
    head = d * 5
    expected_macs = patch_embed + layers * per_layer + head
    assert flops_per_image(tiny_vit(), 32) == 2 * expected_macs
    assert expected_macs == vit_macs(image_size=32, patch=8, hidden=32, layers=2, intermediate=64, labels=5)


@pytest.mark.parametrize("heads, kv_heads", [(2, 2), (4, 2)])
def test_sdpa_is_counted_once_as_qk_and_av_matmuls(heads, kv_heads):
    # CPU SDPA runs _scaled_dot_product_flash_attention_for_cpu, absent from torch < 2.15's table: counted as 0 there
    b, s_q, s_k, d = 2, 5, 7, 8
    query, key, value = torch.randn(b, heads, s_q, d), torch.randn(b, kv_heads, s_k, d), torch.randn(b, kv_heads, s_k, d)
    with flop_counter() as counter:
        torch.nn.functional.scaled_dot_product_attention(query, key, value, enable_gqa=heads != kv_heads)
    assert counter.get_total_flops() == 2 * (b * heads * s_q * s_k * d) * 2  # QK^T and AV, 2 FLOPs per MAC


def vit_macs(*, image_size, patch, hidden, layers, intermediate, labels, channels=3):
    """Multiply-accumulates of a ViT forward pass for one image, by hand: every matmul and both attention products."""
    patches = (image_size // patch) ** 2
    n = patches + 1  # + CLS
    patch_embed = patches * (channels * patch * patch) * hidden
    attention = 2 * n * n * hidden  # QK^T and AV over all heads: the head count cancels
    per_layer = 3 * n * hidden * hidden + attention + n * hidden * hidden + 2 * n * hidden * intermediate
    return patch_embed + layers * per_layer + hidden * labels


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_flops_of_a_transformers_vit_match_the_analytic_count(attention):
    from transformers import ViTConfig, ViTForImageClassification

    model = ViTForImageClassification(ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        num_labels=3, attn_implementation=attention))
    expected = vit_macs(image_size=32, patch=8, hidden=32, layers=2, intermediate=48, labels=3)
    assert flops_per_image(model, 32) == 2 * expected


@pytest.mark.parametrize("patch, depth, study_macs_per_64", [
    (8, 8, 6_979_797_024), (4, 4, 13_705_822_224), (4, 8, 27_358_609_440)])
def test_macs_of_the_hw6_vits_match_the_study(patch, depth, study_macs_per_64):
    model = ScratchViTForImageClassification(ScratchViTConfig(
        image_size=32, patch_size=patch, hidden_size=256, num_hidden_layers=depth, num_attention_heads=4,
        intermediate_size=1024, num_labels=100))
    profile = model_profile(model, 32)
    assert profile["macs_per_image"] * 64 == pytest.approx(study_macs_per_64, rel=0.01)


def test_latency_is_measured_per_batch():
    timing = inference_latency(tiny_vit(), 32, batch_size=4, warmup=1, iterations=3)
    assert timing["inference_ms_per_batch"] > 0 and timing["latency_batch_size"] == 4
    assert timing["images_per_second"] == pytest.approx(4000 / timing["inference_ms_per_batch"])


@pytest.fixture(scope="module")
def synthetic_model_dir(tmp_path_factory):
    """An untrained ScratchViT with the synthetic labels: varied, deterministic predictions."""
    from transformers import ViTImageProcessor

    path = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    model = tiny_vit(num_labels=len(CLASSES), id2label=dict(enumerate(CLASSES)),
                     label2id={c: i for i, c in enumerate(CLASSES)})
    model.save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(path)
    return path


def script(name, *args, nproc=None, timeout=600):
    result = subprocess.run(script_command(name, *args, nproc=nproc), capture_output=True, text=True, cwd=REPO,
                            timeout=timeout, env=script_env())
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_distributed_evaluation_equals_single_process(tmp_path, synthetic_model_dir, capsys):
    # 101 images in batches of 16 over 2 processes: the last batch is split unevenly and padded by Accelerate
    common = ["--model", synthetic_model_dir, "--data", "synthetic", "--max-samples", 101, "--batch-size", 16]
    status, out, err = run_cli_in_process(capsys, "evaluate", *common, "--out", tmp_path / "one.json")
    assert status == 0 and "on 1 process(es)" in out, err[-2000:]
    assert "on 2 process(es)" in script("evaluate", *common, "--out", tmp_path / "two.json", nproc=2).stdout
    one, two = (json.loads((tmp_path / f).read_text())["test"] for f in ("one.json", "two.json"))
    assert one["num_samples"] == two["num_samples"] == 101
    assert one["confusion_matrix"] == two["confusion_matrix"]
    for key in ("accuracy", "top5_accuracy", "macro_f1", "weighted_f1", "loss"):
        assert one[key] == pytest.approx(two[key], rel=1e-6), key


@pytest.mark.slow
def test_report_compares_runs(tmp_path, synthetic_model_dir, capsys):
    from conftest import tiny_recipe_overrides

    from hfvision.recipe import load_recipe
    from hfvision.pipeline import fit

    runs = []
    for name, width in (("narrow", 32), ("wide", 64)):
        fit(load_recipe(REPO / "recipes" / "quickstart.yaml",
                        tiny_recipe_overrides(tmp_path / name, **{"model.config.hidden_size": width})))
        runs.append(tmp_path / name)
    rows = write_run_comparison(runs, tmp_path / "cmp" / "table.md")
    assert [r["run"] for r in rows] == ["narrow", "wide"]
    assert rows[0]["parameters"] < rows[1]["parameters"]
    text = (tmp_path / "cmp" / "table.md").read_text()
    assert text.count("\n") == 4 and "| narrow | scratch_vit | full |" in text
    assert (tmp_path / "cmp" / "table.csv").read_text().splitlines()[0].startswith("run,model,tuning,parameters")
    assert (tmp_path / "cmp" / "table_curves.png").stat().st_size > 10_000
    assert (tmp_path / "cmp" / "table_accuracy_vs_time.png").stat().st_size > 10_000
    assert rows[0]["epochs"] == 1 and rows[0]["train_minutes"] > 0 and rows[0]["train_pflops"] > 0
    status, out, err = run_cli_in_process(capsys, "report", *runs, "--out", tmp_path / "cli.md")
    assert status == 0 and "| wide |" in out, err[-2000:]


@pytest.mark.slow
def test_the_usual_way_peer_trains_for_the_recipes_budget_and_report_overlays_it(tmp_path):
    recipe = {"model": {"name": "scratch_vit", "config": {"image_size": 32, "patch_size": 8, "hidden_size": 32,
                                                          "num_hidden_layers": 1, "num_attention_heads": 2,
                                                          "intermediate_size": 64}},
              "data": {"dataset": "synthetic", "max_train_samples": 240, "max_eval_samples": 120,
                       "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
              "train": {"epochs": 1000, "batch_size": 32, "learning_rate": 0.003, "time_budget_minutes": 0.1},
              "eval": {"batch_size": 64}}
    (tmp_path / "vit.yaml").write_text(yaml.safe_dump(recipe))
    script("benchmark.py", "--usual-way", tmp_path / "vit.yaml", "--usual-way-dir", tmp_path / "usual", "--workers", 0)
    metrics = json.loads((tmp_path / "usual" / "metrics.json").read_text())
    training, history = metrics["training"], metrics["history"]
    assert training["time_budget_spent"] and 6 <= training["seconds"] < 6 + 30 and len(history) < 1000
    assert [h["elapsed_seconds"] for h in history] == sorted(h["elapsed_seconds"] for h in history)
    assert training["images_seen"] == history[-1]["images_seen"] and training["train_flops"] == history[-1]["train_flops"]
    assert metrics["test"]["accuracy"] > 1 / 6 + 0.1  # learned: the synthetic classes are separable by colour
    rows = write_run_comparison([tmp_path / "usual"], tmp_path / "report" / "comparison.md")
    assert rows[0]["train_minutes"] > 0.1 and (tmp_path / "report" / "comparison_accuracy_vs_time.png").is_file()


@pytest.mark.slow
def test_benchmark_script_writes_its_tables(tmp_path):
    # built for 10 classes: the quickstart ViT has 74,822 parameters with 6, 75,082 with 10
    result = script("benchmark.py", "--families", "--recipe", REPO / "recipes" / "quickstart.yaml", "--batch-size", 4,
                    "--steps", 1, "--out", tmp_path)
    rows = json.loads((tmp_path / "cpu.json").read_text())["rows"]
    assert rows[0]["parameters"] == 75_082 and rows[0]["train_images_per_s_fp32"] > 0
    assert "| quickstart |" in (tmp_path / "cpu.md").read_text() and "quickstart" in result.stdout


def test_environment_records_the_installed_versions_of_the_whole_stack():
    import captum
    import peft
    import torchvision
    import transformers

    from hfvision.evaluation.environment import environment

    packages = environment()["packages"]
    for module in (torch, torchvision, transformers, peft, captum):
        assert packages[module.__name__].split("+")[0] == module.__version__.split("+")[0]
