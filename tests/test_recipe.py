import subprocess
import sys

import pytest
import yaml
from conftest import REPO, run_cli_in_process

from hfvision.errors import RecipeError
from hfvision.recipe import Recipe, load_recipe, parse_overrides


def write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_defaults_and_overrides_are_typed(tmp_path):
    recipe = load_recipe(write(tmp_path, "train:\n  epochs: 2\n"),
                         ["train.learning_rate=3e-4", "data.mean=[0.4,0.5,0.6]", "model.config.hidden_size=64",
                          "train.max_grad_norm=null"])
    assert recipe.train.epochs == 2
    assert recipe.train.learning_rate == pytest.approx(3e-4) and isinstance(recipe.train.learning_rate, float)
    assert recipe.data.mean == [0.4, 0.5, 0.6]
    assert recipe.model.config == {"hidden_size": 64}
    assert recipe.train.max_grad_norm is None
    assert recipe.data.augment.random_crop_padding == 4  # untouched default


def test_integer_accepted_where_number_expected():
    assert parse_overrides(["train.learning_rate=1"]) == {"train": {"learning_rate": 1}}
    recipe = load_recipe(None, ["train.learning_rate=1"])
    assert recipe.train.learning_rate == 1.0


@pytest.mark.parametrize("overrides, message", [
    (["train.epoch=3"], "unknown key 'train.epoch' (did you mean 'train.epochs'?)"),
    (["trian.epochs=3"], "unknown key 'trian' (did you mean 'train'?)"),
    (["data.augment.mixup=0.2"], "unknown key 'data.augment.mixup' (did you mean 'data.augment.mixup_alpha'?)"),
    (["train.epochs=three"], "train.epochs: expected an integer, got 'three'"),
    (["train.epochs=true"], "train.epochs: expected an integer, got True"),
    (["train.learning_rate=-0.1"], "train.learning_rate: expected a positive number, got -0.1"),
    (["data.val_fraction=1.5"], "data.val_fraction: expected a number in (0, 1), got 1.5"),
    (["model.tuning=partial"], "model.tuning: 'partial' is not one of full, head_only, head_and_last_stage"),
    (["train.optimizer=lion"], "train.optimizer: 'lion' is not one of adamw, adam, sgd"),
    (["data.dataset=./no/such/dir"], "data.dataset: directory ./no/such/dir does not exist"),
    (["data.mean=[0.5,0.5]"], "data.mean: expected three numbers"),
    (["hub.push=true"], "hub.repo_id: required when hub.push is true"),
    (["train.ema_decay=1.0"], "train.ema_decay: expected a number in (0, 1) or null"),
    (["epochs"], "override 'epochs': expected key=value"),
    (["data.augment.random_resized_crop=true"],
     "data.augment.random_resized_crop: an alternative to the pad-and-crop of data.augment.random_crop_padding (4), "
     "not an addition; set data.augment.random_crop_padding: 0"),
    (["data.augment.random_resized_crop_scale=[0.5,1]"],
     "data.augment.random_resized_crop_scale: only used with data.augment.random_resized_crop: true"),
    (["data.augment.random_resized_crop_ratio=[1,1]"],
     "data.augment.random_resized_crop_ratio: only used with data.augment.random_resized_crop: true"),
    (["data.augment.random_resized_crop_scale=[0.5]"], "data.augment.random_resized_crop_scale: expected two "
                                                        "numbers [lo, hi] with 0 < lo <= hi <= 1, got [0.5]"),
    (["data.augment.random_resized_crop_scale=[0,1]"], "random_resized_crop_scale: expected two numbers"),
    (["data.augment.random_resized_crop_scale=[0.9,0.5]"], "random_resized_crop_scale: expected two numbers"),
    (["data.augment.random_resized_crop_scale=[0.5,1.5]"], "random_resized_crop_scale: expected two numbers"),
    (["data.augment.random_resized_crop_scale=[0.5,.nan]"], "random_resized_crop_scale: expected two numbers"),
    (["data.augment.random_resized_crop_scale=[a,b]"], "random_resized_crop_scale: expected two numbers"),
    (["data.augment.random_resized_crop_ratio=[1,2,3]"], "data.augment.random_resized_crop_ratio: expected two "
                                                         "numbers [lo, hi] with 0 < lo <= hi, got [1, 2, 3]"),
    (["data.augment.random_resized_crop_ratio=[-1,1]"], "random_resized_crop_ratio: expected two numbers"),
    (["data.augment.random_resized_crop_ratio=[2,1]"], "random_resized_crop_ratio: expected two numbers"),
    (["data.augment.random_resized_crop_ratio=[1,.inf]"], "random_resized_crop_ratio: expected two numbers"),
])
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(RecipeError) as info:
        load_recipe(None, overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(RecipeError, match="recipe file .*nope.yaml does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(write(tmp_path, "train: [1, 2\n"))
    with pytest.raises(RecipeError, match="expected a mapping"):
        load_recipe(write(tmp_path, "- 1\n- 2\n"))


def test_saved_recipe_round_trips(tmp_path):
    recipe = load_recipe(None, ["train.epochs=7", "model.config.patch_size=8"])
    recipe.save(tmp_path / "r.yaml")
    again = load_recipe(tmp_path / "r.yaml")
    assert again == recipe
    assert yaml.safe_load((tmp_path / "r.yaml").read_text())["train"]["epochs"] == 7


@pytest.mark.parametrize("path", sorted((REPO / "recipes").rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_load(path):
    assert isinstance(load_recipe(path, ["data.dataset=synthetic"]), Recipe)  # CPU-budget recipes read ../shared


BAD_RECIPE_ARGS = [
    (["train.epoch=1"], "error: unknown key 'train.epoch' (did you mean 'train.epochs'?)"),
    (["train.batch_size=big"], "error: train.batch_size: expected an integer, got 'big'"),
    (["data.dataset=../missing_dataset_dir"], "error: data.dataset: directory ../missing_dataset_dir does not exist"),
    (["model.config.hiden_size=3"], "error: unknown key 'model.config.hiden_size' for scratch_vit (did you mean"),
]


@pytest.mark.slow
def test_finetune_script_rejects_a_bad_recipe_in_one_line(tmp_path):
    args, message = BAD_RECIPE_ARGS[0]
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "finetune.py"), str(REPO / "recipes" / "quickstart.yaml"),
                             f"output_dir={tmp_path / 'run'}", "train.report_to=none", *args],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(message), result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoint").exists()


@pytest.mark.parametrize("args, message", BAD_RECIPE_ARGS)
def test_train_command_rejects_bad_recipes_in_one_line(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(REPO)
    status, _, err = run_cli_in_process(capsys, "train", REPO / "recipes" / "quickstart.yaml",
                                        f"output_dir={tmp_path / 'run'}", "train.report_to=none", *args)
    assert status == 2  # (an exception other than the one-line error would fail this test outright)
    assert err.strip().splitlines()[-1].startswith(message), err
    assert not (tmp_path / "run" / "checkpoint").exists()
