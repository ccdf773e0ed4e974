"""``train.time_budget_minutes``: the schedule is sized to the budget, training stops when it is spent, and the
run records what it cost (images, steps, epochs, seconds, FLOPs)."""

import pytest
from conftest import REPO, tiny_recipe_overrides

from hfvision.pipeline import fit
from hfvision.recipe import load_recipe
from hfvision.training.optim import lr_multiplier


@pytest.mark.slow
def test_a_time_budget_stops_the_run_and_sizes_the_schedule_to_it(tmp_path):
    budget_minutes = 0.5
    epochs = 100_000  # far more than fit, however fast the machine: the budget, not the epochs, ends the run
    recipe = load_recipe(REPO / "recipes" / "quickstart.yaml", tiny_recipe_overrides(
        tmp_path / "run", **{"train.epochs": epochs, "train.time_budget_minutes": budget_minutes,
                             "train.warmup_epochs": 0}))
    metrics = fit(recipe)
    training, history = metrics["training"], metrics["history"]
    assert training["time_budget_spent"] and len(history) < epochs
    # stopped at the first step boundary past the budget, then validated once more
    assert budget_minutes * 60 <= training["seconds"] < budget_minutes * 60 + 60
    assert training["images_seen"] == history[-1]["images_seen"] == sum(
        round(h["train_images_per_second"] * h["epoch_seconds"]) for h in history)
    assert training["train_flops"] == 3 * metrics["model"]["flops_per_image"] * training["images_seen"]
    # the cosine schedule was sized to the steps that fit: it ends near zero, where the nominal one would barely have started
    steps = training["optimizer_steps"]
    assert history[-1]["learning_rate"] < 0.3 * recipe.train.learning_rate
    assert lr_multiplier(steps, train=recipe.train, steps_per_epoch=8) > 0.99
    assert [h["elapsed_seconds"] for h in history] == sorted(h["elapsed_seconds"] for h in history)
