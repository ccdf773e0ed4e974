"""``hfvision export``: every family and every ScratchViT variant axis exports to ONNX with logits within 1e-4 of
torch and the same top-1; the export dir is self-describing and runs through ``hfvision predict`` on onnxruntime
without a torch model being built."""

import json

import numpy as np
import pytest
import torch
from conftest import run_cli_in_process
from PIL import Image

import hfvision.predict as predict_module
from hfvision.export import export_onnx
from hfvision.models.factory import build_model, resolve_input_spec
from hfvision.predict import predict
from hfvision.recipe import DataRecipe, ModelRecipe

AXES = {"patch_embedding": ["overlapping", "conv"], "norm_type": ["rmsnorm"], "qk_norm": [True],
        "ffn_type": ["swiglu"], "position_embedding": ["sincos1d", "sincos2d", "rope", "none"], "num_registers": [2]}
SCRATCH = [{}] + [{axis: value} for axis, values in AXES.items() for value in values]  # {} = learned, linear, ...


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(1)
    for i in range(12):
        size = (32 + 8 * (i % 3), 32)
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(root / f"p{i}.png")
    return root


def saved_built_in(tmp_path, name, config, labels=None):
    recipe = ModelRecipe(name=name, config={"image_size": 32, **config})
    torch.manual_seed(0)
    built = build_model(recipe, resolve_input_spec(recipe, DataRecipe()), labels or [f"c{i}" for i in range(6)])
    built.model.save_pretrained(tmp_path / "model")
    built.image_processor.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


TINY_SCRATCH = {"patch_size": 4, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                "intermediate_size": 64}


def check_export(source, out, photos):
    report = export_onnx(str(source), out, images=[str(photos)])
    fp32 = report["fp32"]
    assert fp32["max_abs_logit_difference"] <= 1e-4 and fp32["top1_agreement"] == 1.0, fp32
    assert json.loads((out / "export.json").read_text())["opset"] == 18
    for batch in ("batch_1", "batch_64"):
        assert fp32["latency"][batch]["onnxruntime_images_per_second"] > 0
    return report


@pytest.mark.parametrize("variant", SCRATCH, ids=lambda v: "-".join(f"{k}={v}" for k, v in v.items()) or "default")
def test_every_scratch_vit_axis_exports_with_torch_logits(variant, tmp_path, photos):
    check_export(saved_built_in(tmp_path, "scratch_vit", {**TINY_SCRATCH, **variant}), tmp_path / "onnx", photos)


@pytest.mark.parametrize("family", ["vit", "swin", "timm_vit", "resnet18_cifar"])
def test_every_family_exports_with_torch_logits(family, tmp_path, photos, tiny_pretrained_dirs):
    if family in ("vit", "swin"):
        source = tiny_pretrained_dirs[family]
    elif family == "timm_vit":
        from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

        config = TimmWrapperConfig(architecture="vit_tiny_patch16_224", num_labels=10,
                                   model_args={"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1,
                                               "num_heads": 2},
                                   pretrained_cfg={"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3,
                                                   "interpolation": "bilinear", "crop_pct": 1.0})
        source = tmp_path / "timm"
        TimmWrapperForImageClassification(config).save_pretrained(source)
    else:
        source = saved_built_in(tmp_path, "resnet18_cifar", {})
    check_export(source, tmp_path / "onnx", photos)


def test_the_export_dir_predicts_without_building_a_torch_model(tmp_path, photos, monkeypatch, capsys):
    source = saved_built_in(tmp_path, "scratch_vit", {**TINY_SCRATCH, "position_embedding": "rope"})
    report = check_export(source, tmp_path / "onnx", photos)
    reference = predict(str(source), [str(photos)])
    monkeypatch.setattr(predict_module, "load_model_for_inference",
                        lambda *a, **k: pytest.fail("a torch model was built"))
    status, out, err = run_cli_in_process(capsys, "predict", "--model", tmp_path / "onnx", photos,
                                          "--out", tmp_path / "p.jsonl")
    assert status == 0, err
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows] == [r["label"] for r in reference.rows] and len(rows) == 12
    for got, want in zip(rows, reference.rows):
        assert got["score"] == pytest.approx(want["score"], abs=1e-5)
    assert report["validated_on"] == 12


def test_int8_is_checked_against_fp32_and_reports_accuracy_on_a_labelled_split(tmp_path):
    from hfvision.data.sources import load_eval_split

    _, synthetic_labels = load_eval_split("synthetic", "test", 32, 8)
    source = saved_built_in(tmp_path, "scratch_vit", TINY_SCRATCH, labels=synthetic_labels)
    report = export_onnx(str(source), tmp_path / "onnx", data="synthetic", max_samples=64, int8=True)
    assert (tmp_path / "onnx" / "model.int8.onnx").is_file()
    assert 0 <= report["int8"]["top1_agreement"] <= 1 and "accuracy" in report["int8"] and "accuracy" in report["fp32"]
    assert report["fp32"]["accuracy"] == report["torch_reference"]["accuracy"]


def test_export_without_images_to_validate_on_is_one_line(tmp_path, capsys, tiny_pretrained_dirs):
    status, _, err = run_cli_in_process(capsys, "export", "--model", tiny_pretrained_dirs["vit"], "--out", tmp_path)
    assert status == 2 and err.strip() == ("error: export: give --images FILES_OR_FOLDERS or --data SOURCE to "
                                           "validate the export on (a run dir's own held-out split is the default)")


@pytest.mark.slow
def test_a_run_on_a_folder_without_a_split_is_validated_on_its_own_held_out_test_part(tmp_path, capsys):
    """A photo folder has no test split: the export of its run takes the part the run held out, as the run did."""
    from conftest import REPO, tiny_recipe_overrides

    from hfvision.pipeline import fit
    from hfvision.recipe import load_recipe

    rng = np.random.default_rng(0)
    for i in range(60):
        label = i % 2
        (tmp_path / "photos" / f"class{label}").mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 120, (32, 32, 3), dtype=np.uint8) + np.uint8(120 * label)
        Image.fromarray(pixels).save(tmp_path / "photos" / f"class{label}" / f"{i}.png")
    run = tmp_path / "run"
    metrics = fit(load_recipe(REPO / "recipes" / "quickstart.yaml", tiny_recipe_overrides(
        run, **{"data.dataset": str(tmp_path / "photos"), "data.val_fraction": 0.2})))
    status, printed, err = run_cli_in_process(capsys, "export", "--model", run, "--out", tmp_path / "onnx")
    assert status == 0, err[-2000:]
    report = json.loads((tmp_path / "onnx" / "export.json").read_text())
    assert report["validated_on"] == metrics["test"]["num_samples"] > 0
    assert report["validation_source"] == f"{run} (its test split)"
    assert report["fp32"]["accuracy"] == report["torch_reference"]["accuracy"] == metrics["test"]["accuracy"]
    status, _, err = run_cli_in_process(capsys, "export", "--model", run, "--out", tmp_path / "onnx", "--data",
                                        str(tmp_path / "photos"))
    assert status == 2 and "has no split 'test' (has train)" in err


def test_int8_quantises_weight_matmuls_per_channel_and_keeps_the_mlp_activation_inputs_and_head_fp32(
        tmp_path, photos, tiny_pretrained_dirs):
    import onnx
    from onnx import numpy_helper

    report = export_onnx(str(tiny_pretrained_dirs["vit"]), tmp_path / "onnx", images=[str(photos)], int8=True)
    graph = onnx.load(str(tmp_path / "onnx" / "model.int8.onnx")).graph
    fp32_matmuls = {n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in
                    {i.name for i in graph.initializer}}
    kept = report["int8"]["kept_fp32"]
    assert sorted(n.split("/")[-2] for n in kept) == ["classifier", "fc2", "fc2"]  # 2 layers' fc2, the head
    assert {n.removesuffix("_MatMul") for n in fp32_matmuls} == set(kept)  # the quantiser renames the Gemm head
    assert sum(n.op_type == "MatMulInteger" for n in graph.node) == 2 * 5  # q, k, v, o, fc1 in each of 2 layers
    assert any(n.op_type == "Conv" for n in graph.node) and not any(n.op_type == "ConvInteger" for n in graph.node)
    scales = [numpy_helper.to_array(i) for i in graph.initializer if i.name.endswith("_scale") and "MatMul" in i.name]
    assert scales and all(s.ndim == 1 and s.size > 1 for s in scales)  # one scale per output channel


def test_onnx_sessions_take_as_many_threads_as_torch_and_keep_onnxruntimes_spinning(tmp_path, photos):
    """Under torchrun each process has one torch thread; onnxruntime's default (one per core in each process)
    would oversubscribe the cores."""
    from hfvision.export import OnnxClassifier

    source = saved_built_in(tmp_path, "scratch_vit", TINY_SCRATCH)
    export_onnx(str(source), tmp_path / "onnx", images=[str(photos)])
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            options = OnnxClassifier(tmp_path / "onnx").session.get_session_options()
            assert options.intra_op_num_threads == count
            with pytest.raises(RuntimeError, match="allow_spinning"):  # not set: onnxruntime's default, spinning
                options.get_session_config_entry("session.intra_op.allow_spinning")
    finally:
        torch.set_num_threads(threads)


def test_latency_runs_each_runtime_in_blocks_alternated_round_by_round(monkeypatch):
    """Each runtime's calls come in blocks (a warm-up, then the timed calls), the two alternating round after round,
    never interleaved call by call; each onnxruntime block has its own session, closed before torch's next block
    (its spinning threads would take torch's cores); the speedup is the median of the rounds' ratios."""
    import weakref

    from hfvision import export

    calls, clock, sessions = [], {"t": 0.0}, []
    cost = {"torch": 2.0, "onnxruntime": 1.0}

    class Runtime:
        def __init__(self, name):
            self.name = name

        def __call__(self, pixel_values):
            if self.name == "torch":
                assert all(session() is None for session in sessions), "a session was left open beside torch"
            calls.append((self.name, pixel_values.shape[0]))
            clock["t"] += cost[self.name] * pixel_values.shape[0]

    def open_session():
        session = Runtime("onnxruntime")
        sessions.append(weakref.ref(session))
        calls.append(("open", None))
        return session

    monkeypatch.setattr(export.time, "perf_counter", lambda: clock["t"])
    monkeypatch.setattr(export, "LATENCY_BATCHES", (1, 4))
    monkeypatch.setattr(export, "LATENCY_ROUNDS", {1: (3, 2), 4: (2, 1)})
    out = export._latency(Runtime("torch"), open_session, 8)
    block = lambda name, size, n: [(name, size)] * n  # noqa: E731
    expected = []
    for size, (rounds, per_block) in ((1, (3, 2)), (4, (2, 1))):
        expected += (block("torch", size, 1 + per_block) + [("open", None)]
                     + block("onnxruntime", size, 1 + per_block)) * rounds
    assert calls == expected
    assert len(sessions) == 5 and all(session() is None for session in sessions)
    assert out["batch_1"]["onnxruntime_speedup"] == 2.0 and out["batch_4"]["torch_images_per_second"] == 0.5
    assert (out["batch_1"]["rounds"], out["batch_1"]["calls_per_block"]) == (3, 2)
