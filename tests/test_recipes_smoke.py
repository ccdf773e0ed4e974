"""Every shipped recipe runs for two steps on tiny synthetic data, Hub ids swapped for local tiny checkpoints."""

import pytest
import torch
import yaml
from conftest import REPO, tiny_recipe_overrides

from hfvision.models.families import BUILT_IN
from hfvision.recipe import load_recipe
from hfvision.sweep import expand
from hfvision.pipeline import fit

RECIPES = sorted((REPO / "recipes").rglob("*.yaml"))


@pytest.fixture(scope="module")
def tiny_timm_dirs(tmp_path_factory):
    """Tiny timm ViT and Swin behind transformers' timm wrapper, saved locally (stand-ins for timm/... ids)."""
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    root = tmp_path_factory.mktemp("timm")
    pretrained_cfg = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear",
                      "crop_pct": 1.0, "crop_mode": "center"}
    dirs = {}
    for name, architecture, args in (
        ("vit", "vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}),
        ("swin", "swin_tiny_patch4_window7_224", {"img_size": 32, "patch_size": 2, "window_size": 4, "embed_dim": 16,
                                                  "depths": [1, 1], "num_heads": [1, 2]}),
    ):
        torch.manual_seed(0)
        config = TimmWrapperConfig(architecture=architecture, num_labels=1000, model_args=args,
                                   pretrained_cfg=pretrained_cfg)
        TimmWrapperForImageClassification(config).save_pretrained(root / name)
        dirs[name] = root / name
    return dirs


def local_stand_in(name: str, tiny_pretrained_dirs, tiny_timm_dirs) -> str:
    family = "swin" if "swin" in name else "vit"
    return str((tiny_timm_dirs if name.startswith("timm/") else tiny_pretrained_dirs)[family])


@pytest.mark.slow
@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(REPO / "recipes")))
def test_recipe_runs_two_steps(path, tmp_path, tiny_pretrained_dirs, tiny_timm_dirs):
    raw = yaml.safe_load(path.read_text())
    extra = {"data.max_train_samples": 16, "train.batch_size": 8, "data.max_eval_samples": 16,
             "eval.explain": raw.get("eval", {}).get("explain", False),
             "data.classes": None}  # a class subset of the real source does not apply to the synthetic one
    name = raw["model"]["name"]
    if name not in BUILT_IN:
        extra.update({"model.name": local_stand_in(name, tiny_pretrained_dirs, tiny_timm_dirs), "data.image_size": None})
    metrics = fit(load_recipe(path, tiny_recipe_overrides(tmp_path / "run", **extra)))
    assert len(metrics["history"]) == 1 and metrics["test"]["num_samples"] == 16
    assert torch.isfinite(torch.tensor(metrics["history"][0]["train_loss"]))
    if extra["eval.explain"]:
        assert (tmp_path / "run" / "gradcam_per_class.png").stat().st_size > 10_000


@pytest.mark.parametrize("path", [p for p in RECIPES if "sweep" in yaml.safe_load(p.read_text())],
                         ids=lambda p: str(p.relative_to(REPO / "recipes")))
def test_every_sweep_run_of_a_recipe_is_valid(path):
    """Each run a study sweeps to loads as a recipe, and its scratch architecture is a valid config."""
    from hfvision.models.families import BUILT_IN as families

    base = load_recipe(path, ["data.dataset=synthetic"])
    runs = expand(base.sweep.grid, base.sweep.variants, base.sweep.name_template)
    assert len({r.name for r in runs}) == len(runs) > 1
    for run in runs:
        recipe = load_recipe(path, ["data.dataset=synthetic"] + run.overrides)
        if recipe.model.name in families:
            family = families[recipe.model.name]
            family.config_class(**{**family.defaults, **recipe.model.config})
