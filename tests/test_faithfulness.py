"""Faithfulness metrics on models whose true attribution is known, the randomisation check, Score-CAM and occlusion
on every family, and the ``hfvision faithfulness`` command."""

import json

import numpy as np
import pytest
import torch
from conftest import REPO, run_cli_in_process
from test_explain import NORM, family_models
from torch import nn

from hfvision import ScratchViTConfig, ScratchViTForImageClassification
from hfvision.explain.api import FAITHFULNESS_ROWS, explain_pixels, measure_faithfulness
from hfvision.explain.faithfulness import (
    deletion_insertion,
    pixel_ranks,
    random_maps,
    noisy_linear_impute,
    randomised_copy,
    rank_correlation,
    road,
)
from hfvision.explain.occlusion import OcclusionMap
from hfvision.explain.scorecam import ScoreCam

REGION = (slice(0, 16), slice(0, 16))  # the top-left quadrant of a 32 px image


class RegionContrast(nn.Module):
    """Two classes; the logit of class 0 is the contrast (standard deviation) of the top-left quadrant only, so the
    true attribution of class 0 is that quadrant. Deleting its pixels (to 0) or blurring it lowers the logit."""

    def forward(self, pixel_values):
        region = pixel_values[:, :, REGION[0], REGION[1]].flatten(1)
        return torch.stack([6.0 * (region.std(dim=1) - 0.5), torch.zeros(len(pixel_values))], dim=1)


class PooledRegionContrast(RegionContrast):
    """RegionContrast read from the image average-pooled by ``scale``: the same true region at a larger size."""

    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, pixel_values):
        return super().forward(nn.functional.avg_pool2d(pixel_values, self.scale))


def region_maps(count, where):
    maps = torch.zeros(count, 32, 32)
    if where == "true":
        maps[:, REGION[0], REGION[1]] = 1.0
    else:  # the opposite quadrant
        maps[:, 16:, 16:] = 1.0
    return maps


def test_deletion_and_insertion_rank_the_true_region_first():
    pixels = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    target = torch.zeros(6, dtype=torch.long)
    model = RegionContrast()
    scores = {name: deletion_insertion(model, pixels, maps, target, steps=16)
              for name, maps in {"true": region_maps(6, "true"), "wrong": region_maps(6, "wrong"),
                                 "random": random_maps(6, 32, seed=3)}.items()}
    deletion = {name: float(s["deletion"].mean()) for name, s in scores.items()}
    insertion = {name: float(s["insertion"].mean()) for name, s in scores.items()}
    assert deletion["true"] < deletion["random"] < deletion["wrong"], deletion
    assert insertion["true"] > insertion["random"] > insertion["wrong"], insertion
    curves = scores["true"]["curves"]
    assert curves.shape == (6, 2, 17)
    # the true map removes the whole region in the first quarter of the steps: the class is gone by then
    assert (curves[:, 0, 4] < 0.1).all() and (curves[:, 0, 0] > 0.5).all()
    assert torch.allclose(curves[:, 1, -1], curves[:, 0, 0])  # fully revealed = the untouched image


def test_noisy_linear_imputation_fills_a_linear_ramp_exactly_and_adds_seeded_noise():
    # a linear image is its own weighted-neighbour mean away from the border, so any interior hole is refilled exactly
    rows, cols = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    image = torch.stack([0.3 * rows - 0.1 * cols, 0.05 * cols + 1, torch.full_like(rows, 2.0)])
    removed = torch.zeros(32, 32, dtype=torch.bool)
    removed[5:20, 3:25] = True
    removed[22:30, 10:12] = True
    filled = noisy_linear_impute(image, removed, noise=0.0)
    assert torch.allclose(filled, image, atol=1e-4)
    scrambled = image.clone()
    scrambled[:, removed] = 100.0  # what was there is not used
    assert torch.allclose(noisy_linear_impute(scrambled, removed, noise=0.0), image, atol=1e-4)
    noisy = noisy_linear_impute(image, removed, noise=0.05, generator=torch.Generator().manual_seed(1))
    jitter = (noisy - image)[:, removed]
    assert 0.04 < float(jitter.std()) < 0.06 and torch.count_nonzero((noisy - image)[:, ~removed]) == 0
    again = noisy_linear_impute(image, removed, noise=0.05, generator=torch.Generator().manual_seed(1))
    assert torch.equal(noisy, again)
    # a hole against the border is filled from the inside: bounded by the known values, smooth, no constant
    edge = torch.zeros(32, 32, dtype=torch.bool)
    edge[:8, :] = True
    smooth = noisy_linear_impute(image, edge, noise=0.0)
    assert smooth[0, :8].min() >= image[0, 8:].min() - 1e-4 and smooth[0, :8].max() <= image[0, 8:].max() + 1e-4
    with pytest.raises(ValueError, match="every pixel is removed"):
        noisy_linear_impute(image, torch.ones(32, 32, dtype=torch.bool))


@pytest.mark.parametrize("side", [32, 64])  # at its own size, and on a coarser grid (32 cells of 2 x 2 pixels)
def test_road_ranks_the_true_region_first(side):
    scale = side // 32
    pixels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    pixels = pixels.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)  # pooled: the 32 px image
    pixels_model = RegionContrast() if side == 32 else PooledRegionContrast(scale)
    maps = {name: torch.kron(m, torch.ones(scale, scale)) for name, m in
            {"true": region_maps(4, "true"), "wrong": region_maps(4, "wrong"),
             "random": random_maps(4, 32, seed=3)}.items()}
    target = torch.zeros(4, dtype=torch.long)
    scores = {name: road(pixels_model, pixels, m, target, steps=8, grid=32) for name, m in maps.items()}
    morf = {name: float(s["morf"].mean()) for name, s in scores.items()}
    lerf = {name: float(s["lerf"].mean()) for name, s in scores.items()}
    assert morf["true"] < morf["random"] < morf["wrong"], morf
    assert lerf["true"] > lerf["random"] > lerf["wrong"], lerf
    curves = scores["true"]["curves"]
    assert curves.shape == (4, 2, 9)
    assert torch.allclose(curves[:, 0, 0], curves[:, 1, 0]) and torch.allclose(curves[:, 0, -1], curves[:, 1, -1])
    # the true region is a quarter of the image: removed by MoRF's second step, imputed smooth (only the noise and
    # the gradient from its border left of its contrast), the class mostly gone
    assert (curves[:, 0, 2] < 0.3).all() and (curves[:, 0, 0] > 0.9).all()


def test_pixel_ranks_order_by_heat_and_break_ties_by_seed():
    heat = torch.tensor([[[0.0, 0.9], [0.5, 0.5]]])
    ranks = pixel_ranks(heat, seed=0)
    assert ranks[0, 1] == 0 and ranks[0, 0] == 3 and sorted(ranks[0, 2:].tolist()) == [1, 2]
    flat = torch.zeros(1, 8, 8)
    assert sorted(pixel_ranks(flat, seed=1)[0].tolist()) == list(range(64))
    assert not torch.equal(pixel_ranks(flat, seed=1), pixel_ranks(flat, seed=2))


def tiny_vit(num_labels=3):
    torch.manual_seed(0)
    model = ScratchViTForImageClassification(ScratchViTConfig(image_size=32, patch_size=8, hidden_size=32,
                                                              num_hidden_layers=2, num_attention_heads=2,
                                                              num_labels=num_labels)).eval()
    with torch.no_grad():  # away from the init, as a trained model is (LayerNorm weights at 1 would not move)
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


def test_randomisation_is_top_down_and_leaves_the_model_alone():
    model = tiny_vit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    head = randomised_copy(model, "head", seed=0)
    everything = randomised_copy(model, "all", seed=0)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name])
        assert torch.equal(head.state_dict()[name], value) != name.startswith("classifier.")
        assert not torch.equal(everything.state_dict()[name], value), name
    assert torch.equal(randomised_copy(model, "all", seed=0).state_dict()["classifier.weight"],
                       everything.state_dict()["classifier.weight"])  # seeded
    with pytest.raises(ValueError, match="stage"):
        randomised_copy(model, "middle")


def test_randomisation_check_tells_class_agnostic_from_model_dependent_maps():
    """Rollout never reads the head, so re-initialising the head alone leaves it exactly as it was; Grad-CAM
    reads the head's gradient and changes; the random baseline does not depend on the model at all."""
    model = tiny_vit()
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    result = measure_faithfulness(model, NORM, images, rows=("gradcam", "rollout", "random"), steps=4)
    rows = {row["method"]: row for row in result["rows"]}
    assert rows["rollout"]["spearman_head_randomised"] == pytest.approx(1.0)
    assert rows["gradcam"]["spearman_head_randomised"] < 0.9
    assert rows["random"]["spearman_all_randomised"] == pytest.approx(1.0)
    assert rows["rollout"]["spearman_all_randomised"] < 0.9
    a = torch.rand(2, 8, 8)
    np.testing.assert_allclose(rank_correlation(a, a), 1.0)
    np.testing.assert_allclose(rank_correlation(a, torch.zeros(2, 8, 8)), 0.0)


def tiny_timm_vit():
    """A tiny timm ViT in transformers' TimmWrapper layout (the real ViT-Ti's timm layout, shrunk)."""
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    torch.manual_seed(0)
    return TimmWrapperForImageClassification(TimmWrapperConfig(
        architecture="vit_tiny_patch16_224", num_labels=4,
        model_args={"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2})).eval()


def every_family():
    return {**family_models(), "timm_vit": tiny_timm_vit()}


@pytest.mark.parametrize("family", list(every_family()))
def test_scorecam_and_occlusion_on_every_family(family):
    model = every_family()[family].eval()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for explainer in (ScoreCam(model, batch_size=16), OcclusionMap(model, batch_size=32)):
        heat, target = explainer(pixels)
        assert heat.shape == (2, 32, 32) and torch.isfinite(heat).all()
        assert heat.min() >= 0 and heat.max() == pytest.approx(1.0)
        alone, _ = explainer(pixels[1:2], target[1:2])
        torch.testing.assert_close(alone[0], heat[1], atol=1e-4, rtol=1e-4)  # batching does not change a map


def test_occlusion_finds_the_region_the_logit_reads():
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    heat, _ = OcclusionMap(RegionContrastModel())(pixels, 0)
    inside = heat[:, REGION[0], REGION[1]].mean()
    assert inside > 5 * heat[:, 16:, 16:].mean()


class RegionContrastModel(nn.Module):
    """``RegionContrast`` with parameters (the explainers read the device off them)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, pixel_values):
        return RegionContrast()(pixel_values) * self.scale


def test_scorecam_weights_are_the_softmax_of_masked_logits():
    """Against the paper's Algorithm 1 written out for one image of a CNN, channel by channel."""
    model = family_models()["resnet18_cifar"].eval()
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    cam = ScoreCam(model, batch_size=7)
    heat, target = cam(pixels)
    with torch.no_grad():
        seen = []
        handle = cam.target.module.register_forward_hook(lambda m, i, o: seen.append(o))
        model(pixel_values=pixels)
        handle.remove()
        grid = seen[0][0]
        scores = []
        for channel in grid:
            up = torch.nn.functional.interpolate(channel[None, None], size=(32, 32), mode="bilinear",
                                                 align_corners=False)[0, 0]
            span = up.max() - up.min()
            mask = (up - up.min()) / span if span > 0 else torch.zeros_like(up)
            scores.append(model(pixel_values=pixels * mask).logits[0, int(target[0])])
        weights = torch.softmax(torch.stack(scores), dim=0)
        expected = torch.relu((weights[:, None, None] * grid).sum(0))
        expected = torch.nn.functional.interpolate(expected[None, None], size=(32, 32), mode="bilinear",
                                                   align_corners=False)[0, 0]
    torch.testing.assert_close(heat[0], expected / expected.max(), atol=1e-4, rtol=1e-4)


def test_explain_pixels_names_an_unknown_method():
    from hfvision.errors import HfvisionError

    with pytest.raises(HfvisionError, match="--method: 'lime' is not one of"):
        explain_pixels(tiny_vit(), torch.zeros(1, 3, 32, 32), "lime")


def test_faithfulness_command_writes_the_table_and_the_figure(tmp_path, capsys):
    model_dir = tmp_path / "model"
    model = tiny_vit(num_labels=6)
    model.config.id2label = {i: name for i, name in enumerate(("circle", "square", "triangle", "cross", "ring",
                                                                 "bar"))}
    model.save_pretrained(model_dir)
    from transformers import ViTImageProcessor
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
        model_dir)
    out = tmp_path / "faith"
    status, printed, err = run_cli_in_process(capsys, "faithfulness", "--model", model_dir, "--data", "synthetic",
                                              "--count", 4, "--steps", 4, "--methods", "gradcam,occlusion,random",
                                              "--out", out)
    assert status == 0, err[-2000:]
    report = json.loads((out / "faithfulness.json").read_text())
    assert [row["method"] for row in report["rows"]] == ["gradcam", "occlusion", "random"]
    assert report["images"] == 4 and report["steps"] == 4
    for row in report["rows"]:
        assert 0 <= row["deletion_auc"] <= 1 and 0 <= row["insertion_auc"] <= 1 and row["seconds_per_image"] >= 0
    assert "| occlusion |" in (out / "faithfulness.md").read_text() and "| occlusion |" in printed
    assert (out / "overlays.png").stat().st_size > 10_000
    assert "ROAD" not in (out / "faithfulness.md").read_text() and not report["road"]
    status, printed, err = run_cli_in_process(capsys, "faithfulness", "--model", model_dir, "--data", "synthetic",
                                              "--count", 2, "--steps", 2, "--methods", "random", "--road",
                                              "--out", out)
    assert status == 0, err[-2000:]
    report = json.loads((out / "faithfulness.json").read_text())
    assert report["road"] and 0 <= report["rows"][0]["road_morf_auc"] <= 1 and "road_lerf_auc_sem" in report["rows"][0]
    assert "ROAD MoRF AUC (lower is better)" in (out / "faithfulness.md").read_text()
    status, _, err = run_cli_in_process(capsys, "faithfulness", "--model", model_dir, "--methods", "lime", "--out", out)
    assert status == 2 and "--methods: lime" in err
    status, _, err = run_cli_in_process(capsys, "faithfulness", "--model", model_dir, "--out", out)
    assert status == 2 and "is not a run dir" in err


def test_every_row_of_the_table_is_a_method_or_the_baseline():
    from hfvision.explain.api import METHODS

    assert {method for method, _ in FAITHFULNESS_ROWS.values()} == set(METHODS) | {"random"}


def test_rollout_reads_a_timm_vits_attention():
    model = tiny_timm_vit()
    fused = [block.attn.fused_attn for block in model.timm_model.blocks]
    maps = explain_pixels(model, torch.randn(2, 3, 32, 32), "rollout")[0]
    assert maps.shape == (2, 32, 32) and maps.min() == 0 and maps.max() == pytest.approx(1.0)
    assert [block.attn.fused_attn for block in model.timm_model.blocks] == fused  # put back as it was


SHARED_MODELS = REPO.parent / "shared" / "models"


@pytest.mark.skipif(not (SHARED_MODELS / "timm-vit_tiny_patch16_224").is_dir(), reason="../shared/models absent")
@pytest.mark.parametrize("method", ["gradcam", "rollout"])
def test_the_real_vit_tinys_two_layouts_give_the_same_maps(method):
    from hfvision.models.factory import load_model_for_inference

    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    maps = [explain_pixels(load_model_for_inference(str(SHARED_MODELS / name)).model, pixels, method)[0]
            for name in ("vit-tiny-patch16-224", "timm-vit_tiny_patch16_224")]
    torch.testing.assert_close(maps[0], maps[1], atol=2e-3, rtol=0)
