import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForImageClassification, ViTConfig, ViTForImageClassification

import hfvision
from hfvision import ScratchViTConfig, ScratchViTForImageClassification
from hfvision.models.scratch_vit import (apply_rope, rope_2d_angles, sincos_1d, sincos_2d,
                                        vit_state_dict_from_transformers)

AXES = {
    "patch_embedding": ["linear", "overlapping", "conv"],
    "norm_type": ["layernorm", "rmsnorm"],
    "qk_norm": [False, True],
    "ffn_type": ["mlp", "swiglu"],
    "position_embedding": ["learned", "sincos1d", "sincos2d", "rope", "none"],
    "num_registers": [0, 2],
    "pooling": ["cls", "mean"],
}


def pairwise_variants() -> list[dict]:
    """A greedy pairwise covering set: every value pair of every two axes appears in some variant."""
    names = list(AXES)
    uncovered = {(a, va, b, vb) for a, b in itertools.combinations(names, 2) for va in AXES[a] for vb in AXES[b]}
    variants = []
    for combo in itertools.product(*AXES.values()):
        if not uncovered:
            break
        variant = dict(zip(names, combo))
        pairs = {(a, variant[a], b, variant[b]) for a, b in itertools.combinations(names, 2)}
        if pairs & uncovered:
            uncovered -= pairs
            variants.append(variant)
    # Greedy in product order is not minimal; keep the ones that add coverage, which is what matters here.
    return variants


VARIANTS = pairwise_variants()


def tiny(**fields) -> ScratchViTConfig:
    base = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, num_labels=5)
    base.update(fields)
    return ScratchViTConfig(**base)


def test_pairwise_set_covers_every_value_of_every_axis():
    for axis, values in AXES.items():
        assert {v[axis] for v in VARIANTS} == set(values)
    for a, b in itertools.combinations(AXES, 2):
        assert {(v[a], v[b]) for v in VARIANTS} == set(itertools.product(AXES[a], AXES[b]))


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(str(x) for x in v.values()))
def test_variant_forward_backward_and_round_trip(variant, tmp_path):
    torch.manual_seed(0)
    model = ScratchViTForImageClassification(tiny(**variant))
    pixels = torch.randn(3, 3, 32, 32)
    labels = torch.tensor([0, 1, 4])
    out = model(pixels, labels=labels)
    assert out.logits.shape == (3, 5)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert no_grad == []
    model.eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is ScratchViTForImageClassification
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels).logits, model(pixels).logits, rtol=0, atol=0)


@pytest.mark.parametrize("patch, depth, expected", [(4, 8, 6_373_732), (4, 4, 3_214_692), (8, 8, 6_398_308)])
def test_parameter_counts_of_the_hw6_vits(patch, depth, expected):
    config = ScratchViTConfig(image_size=32, patch_size=patch, hidden_size=256, num_hidden_layers=depth,
                              num_attention_heads=4, intermediate_size=1024, num_labels=100)
    model = ScratchViTForImageClassification(config)
    assert sum(p.numel() for p in model.parameters()) == expected


def analytic_parameter_count(c: ScratchViTConfig) -> int:
    d, i, n = c.hidden_size, c.intermediate_size, (c.image_size // c.patch_size) ** 2
    kernel = c.patch_size + 2 * (c.patch_size // 2) if c.patch_embedding == "overlapping" else c.patch_size
    norm = d if c.norm_type == "rmsnorm" else 2 * d
    head_dim = d // c.num_attention_heads
    head_norm = head_dim if c.norm_type == "rmsnorm" else 2 * head_dim
    if c.ffn_type == "swiglu":
        h = round(2 * i / 3)
        ffn = d * 2 * h + 2 * h + h * d + d
    else:
        ffn = 2 * d * i + i + d
    attention = 3 * d * d + (3 * d if c.qkv_bias else 0) + d * d + d + (2 * head_norm if c.qk_norm else 0)
    block = 2 * norm + attention + ffn
    positions = (n + int(c.cls_position_embedding)) * d if c.position_embedding == "learned" else 0
    projection = c.num_channels * kernel * kernel * d + d
    if c.patch_embedding == "conv":  # 3x3 stride-2 convs (no bias) + BatchNorm, channels doubling up to d; 1x1 to d
        halvings = int(math.log2(c.patch_size))
        channels = [c.num_channels] + [max(d // 2 ** (halvings - 1 - k), 16) for k in range(halvings)]
        projection = sum(9 * a * b + 2 * b for a, b in zip(channels, channels[1:])) + channels[-1] * d + d
    embed = projection + d + c.num_registers * d + positions
    return embed + c.num_hidden_layers * block + norm + d * c.num_labels + c.num_labels


@pytest.mark.parametrize("variant", VARIANTS[:12], ids=lambda v: "-".join(str(x) for x in v.values()))
def test_parameter_count_matches_the_formula(variant):
    config = tiny(**variant)
    model = ScratchViTForImageClassification(config)
    assert sum(p.numel() for p in model.parameters()) == analytic_parameter_count(config)


def test_swiglu_stays_within_two_percent_of_the_mlp():
    mlp = ScratchViTForImageClassification(tiny(hidden_size=192, intermediate_size=768, num_attention_heads=3))
    glu = ScratchViTForImageClassification(tiny(hidden_size=192, intermediate_size=768, num_attention_heads=3,
                                                ffn_type="swiglu"))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert abs(count(glu) - count(mlp)) / count(mlp) < 0.02


def test_sdpa_equals_plain_softmax_attention():
    torch.manual_seed(0)
    model = ScratchViTForImageClassification(tiny(num_registers=1, qk_norm=True)).eval()
    attention = model.vit.blocks[0].attn
    x = torch.randn(2, 17 + 1, 32)
    fast, none = attention(x, None, 2, return_attention=False)
    slow, weights = attention(x, None, 2, return_attention=True)
    assert none is None and weights.shape == (2, 2, 18, 18)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    # and the explicit path is the textbook formula
    q, k, v = attention.qkv(x).reshape(2, 18, 3, 2, 16).permute(2, 0, 3, 1, 4)
    q, k = attention.q_norm(q), attention.k_norm(k)
    reference = F.softmax(q @ k.transpose(-1, -2) / 4.0, dim=-1)
    torch.testing.assert_close(weights, reference)


def test_outputs_attentions_and_hidden_states():
    model = ScratchViTForImageClassification(tiny(num_registers=2)).eval()
    out = model(torch.randn(1, 3, 32, 32), output_attentions=True, output_hidden_states=True)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (1, 2, 19, 19)
    assert len(out.hidden_states) == 3
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(1, 2, 19))


def test_loads_transformers_vit_weights_and_gives_the_same_logits():
    torch.manual_seed(0)
    hf_config = ViTConfig(image_size=32, patch_size=4, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=128, num_labels=7, layer_norm_eps=1e-12)
    reference = ViTForImageClassification(hf_config).eval()
    for p in reference.parameters():  # random, non-trivial values everywhere (biases and norms too)
        torch.nn.init.normal_(p, std=0.1)
    ours = ScratchViTForImageClassification(ScratchViTConfig(
        image_size=32, patch_size=4, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, num_labels=7, layer_norm_eps=1e-12, position_embedding="learned",
        cls_position_embedding=True, patch_embedding="linear", norm_type="layernorm", ffn_type="mlp",
        pooling="cls")).eval()
    ours.load_state_dict(vit_state_dict_from_transformers(reference.state_dict()), strict=True)
    pixels = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(pixels).logits, reference(pixel_values=pixels).logits, rtol=0, atol=1e-5)


def test_rope_scores_depend_only_on_relative_offsets():
    torch.manual_seed(0)
    angles = rope_2d_angles(8, 8, head_dim=16).reshape(8, 8, -1)
    q, k = torch.randn(16), torch.randn(16)

    def score(qpos, kpos):
        return (apply_rope(q[None], angles[qpos][None]) * apply_rope(k[None], angles[kpos][None])).sum()

    base = score((1, 2), (3, 5))
    for shift in ((1, 0), (0, 2), (3, 2)):
        shifted = score((1 + shift[0], 2 + shift[1]), (3 + shift[0], 5 + shift[1]))
        torch.testing.assert_close(shifted, base, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(score((1, 2), (3, 5)), score((1, 2), (5, 3)))


def test_registers_change_token_count_not_output_shape():
    plain = ScratchViTForImageClassification(tiny()).eval()
    regs = ScratchViTForImageClassification(tiny(num_registers=4)).eval()
    pixels = torch.randn(2, 3, 32, 32)
    assert plain.vit(pixels).last_hidden_state.shape[1] == 1 + 16
    assert regs.vit(pixels).last_hidden_state.shape[1] == 1 + 4 + 16
    assert regs(pixels).logits.shape == plain(pixels).logits.shape == (2, 5)


def test_position_options_change_the_model():
    pixels = torch.randn(2, 3, 32, 32)
    torch.manual_seed(0)
    with_cls = ScratchViTForImageClassification(tiny(position_embedding="sincos1d", cls_position_embedding=True)).eval()
    torch.manual_seed(0)
    without = ScratchViTForImageClassification(tiny(position_embedding="sincos1d", cls_position_embedding=False)).eval()
    assert not torch.allclose(with_cls(pixels).logits, without(pixels).logits)
    assert with_cls.vit.position_table is None  # fixed tables are no parameters ...
    assert "position_table" not in "".join(with_cls.state_dict())  # ... and are not saved
    learned = ScratchViTForImageClassification(tiny(cls_position_embedding=False))
    assert learned.vit.position_table.shape == (1, 16, 32)
    with pytest.raises(ValueError, match="cls_position_embedding=true needs position_embedding in learned, sincos1d"):
        tiny(position_embedding="rope", cls_position_embedding=True)


def test_learned_table_resamples_for_another_image_size(tmp_path):
    model = ScratchViTForImageClassification(tiny()).eval()
    out = model(torch.randn(1, 3, 64, 64))  # on the fly, for inputs of another size
    assert out.logits.shape == (1, 5) and torch.isfinite(out.logits).all()
    model.save_pretrained(tmp_path)
    bigger = AutoModelForImageClassification.from_pretrained(tmp_path, image_size=64).eval()  # at load
    assert bigger.config.image_size == 64 and bigger.vit.position_table.shape == (1, 1 + 64, 32)
    torch.testing.assert_close(bigger.vit.position_table[:, 0], model.vit.position_table[:, 0])  # CLS row kept
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(bigger(pixels).logits, model(pixels).logits)  # same as resampling on the fly
    same = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert same.config.image_size == 32 and same.vit.position_table.shape == (1, 17, 32)


@pytest.mark.parametrize("fields, message", [
    (dict(hidden_size=30, num_attention_heads=4), "hidden_size 30 is not divisible by num_attention_heads 4"),
    (dict(image_size=30), "image_size 30 is not divisible by patch_size 8"),
    (dict(norm_type="batchnorm"), "norm_type: 'batchnorm' is not one of layernorm, rmsnorm"),
    (dict(position_embedding="alibi"), "position_embedding: 'alibi' is not one of learned, sincos1d, sincos2d, rope, none"),
    (dict(pooling="max"), "pooling: 'max' is not one of cls, mean"),
    (dict(num_registers=-1), "num_registers: expected an integer >= 0"),
    (dict(hidden_size=36, num_attention_heads=2, position_embedding="rope"), "rope needs a head size divisible by 4"),
    (dict(drop_path_rate=1.5), "drop_path_rate: expected a number in [0, 1)"),
    (dict(image_size=36, patch_size=6, patch_embedding="conv"), "conv patch_embedding needs a patch_size that is a power of 2"),
])
def test_invalid_configs_fail_at_config_time(fields, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        tiny(**fields)


def test_the_conv_stem_halves_the_image_once_per_stride_2_convolution():
    model = ScratchViTForImageClassification(tiny(image_size=32, patch_size=8, patch_embedding="conv"))
    stem = model.vit.patch_embed.stem
    assert [m.stride for m in stem if isinstance(m, torch.nn.Conv2d)] == [(2, 2)] * 3
    tokens, grid = model.vit.patch_embed(torch.randn(2, 3, 32, 32))
    assert grid == (4, 4) and tokens.shape == (2, 16, model.config.hidden_size)


def test_auto_classes_are_registered(tmp_path):
    config = tiny()
    config.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), ScratchViTConfig)
    assert hfvision.ScratchViTConfig is ScratchViTConfig


@pytest.mark.slow
def test_saved_dir_loads_without_hfvision(tmp_path):
    torch.manual_seed(0)
    model = ScratchViTForImageClassification(tiny(position_embedding="rope", num_registers=1, qk_norm=True,
                                                  ffn_type="swiglu", norm_type="rmsnorm")).eval()
    model.save_pretrained(tmp_path / "model")
    pixels = torch.randn(2, 3, 32, 32)
    torch.save(pixels, tmp_path / "pixels.pt")
    torch.save(model(pixels).logits.detach(), tmp_path / "logits.pt")
    assert json.loads((tmp_path / "model" / "config.json").read_text())["auto_map"]["AutoModelForImageClassification"] \
        == "scratch_vit.ScratchViTForImageClassification"
    code = f"""
import sys, torch
sys.modules['hfvision'] = None  # importing hfvision would now fail
from transformers import AutoModelForImageClassification
m = AutoModelForImageClassification.from_pretrained({str(tmp_path / 'model')!r}, trust_remote_code=True).eval()
assert 'hfvision' not in type(m).__module__, type(m).__module__
out = m(torch.load({str(tmp_path / 'pixels.pt')!r})).logits
torch.testing.assert_close(out, torch.load({str(tmp_path / 'logits.pt')!r}), rtol=0, atol=0)
print('ok')
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                            timeout=300)
    assert result.stdout.strip().endswith("ok"), result.stderr[-2000:]


MAIN_FIXTURE = Path(__file__).parent / "fixtures" / "scratch_vit_main"
MAIN_MODELS = sorted(path.name for path in MAIN_FIXTURE.iterdir() if path.is_dir())


def test_the_main_fixture_covers_every_position_scheme():
    schemes = {AutoConfig.from_pretrained(MAIN_FIXTURE / name).position_embedding for name in MAIN_MODELS}
    assert schemes == set(AXES["position_embedding"])


@pytest.mark.parametrize("name", MAIN_MODELS)
def test_dirs_saved_before_position_modules_load_with_the_same_logits(name):
    """The fixture was written by tests/fixtures/scratch_vit_main/make_fixture.py with the code of main at 81d7134."""
    expected = load_file(MAIN_FIXTURE / "expected.safetensors")
    model, info = ScratchViTForImageClassification.from_pretrained(MAIN_FIXTURE / name, output_loading_info=True)
    assert info["missing_keys"] == info["unexpected_keys"] == set() and not info["mismatched_keys"]
    resized = ScratchViTForImageClassification.from_pretrained(MAIN_FIXTURE / name, image_size=24)
    with torch.no_grad():
        # atol 1e-5: a few float32 ulps at these logits' size (this machine gives 1.2e-6, 5 ulps at 2.5, since 2026-12-02)
        torch.testing.assert_close(model.eval()(expected["pixels"]).logits, expected[f"{name}.logits"],
                                   rtol=0, atol=1e-5)
        # a larger input: positions resampled (learned) or computed (fixed) for the 6x6 grid at run time ...
        torch.testing.assert_close(model(expected["pixels_24"]).logits, expected[f"{name}.logits_24"],
                                   rtol=0, atol=1e-5)
        # ... and at load, by the same resampling
        torch.testing.assert_close(resized.eval()(expected["pixels_24"]).logits, expected[f"{name}.logits_24"],
                                   rtol=0, atol=1e-5)


@pytest.mark.parametrize("scheme, reference", [
    ("sincos1d", lambda grid: sincos_1d(1 + grid[0] * grid[1], 32)),  # CLS at index 0 (the default)
    ("sincos2d", lambda grid: sincos_2d(*grid, 32)),
    ("rope", lambda grid: rope_2d_angles(*grid, head_dim=16)),
])
def test_fixed_tables_are_unsaved_buffers_computed_once_per_grid(scheme, reference, monkeypatch):
    model = ScratchViTForImageClassification(tiny(position_embedding=scheme)).eval()
    positions = model.vit.positions
    assert dict(positions.named_buffers()).keys() == {"table_4x4"}
    torch.testing.assert_close(positions.table_4x4, reference((4, 4)), rtol=0, atol=0)
    assert not any("table" in key for key in model.state_dict())
    calls = []
    compute = type(positions).compute
    monkeypatch.setattr(type(positions), "compute", lambda self, grid: calls.append(grid) or compute(self, grid))
    for size in (32, 48, 48, 32):
        model(torch.randn(1, 3, size, size))
    assert calls == [(6, 6)]  # the 4x4 table was built with the model, the 6x6 one on its first use
    torch.testing.assert_close(positions.table_6x6, reference((6, 6)), rtol=0, atol=0)
    model.double()  # the tables move with the model (here: its dtype) ...
    assert positions.table_6x6.dtype == torch.float64
    model.to("meta")  # ... and a new grid's table goes where the others are
    assert positions.table((5, 5)).device.type == "meta"


@pytest.mark.parametrize("position_embedding", ["learned", "sincos1d", "sincos2d", "rope", "none"])
def test_torch_flop_counter_runs_on_every_position_scheme(position_embedding):
    """The FLOP counter tracks module inputs; a parameter passed into a module call would break it under no_grad."""
    from hfvision.evaluation.profile import flops_per_image

    model = ScratchViTForImageClassification(ScratchViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        position_embedding=position_embedding))
    assert flops_per_image(model, 32) > 0
