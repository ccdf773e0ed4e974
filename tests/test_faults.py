"""Hardening, round two: nothing in a run dir is ever executed, non-finite numbers stop a run in one line, damaged
files are named, a full disk is said to be one, a lost best/ is recovered, one run per directory."""

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, tiny_recipe_overrides

from hfvision.cli import run_cli
from hfvision.pipeline import fit
from hfvision.recipe import load_recipe

QUICKSTART = REPO / "recipes" / "quickstart.yaml"


def run_and_exit_line(capsys, main) -> tuple[int, str]:
    """Run ``main`` under the commands' error handling: (exit status, stderr), stderr expected as one line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        run_cli(lambda argv: main(), [])
    err = capsys.readouterr().err.strip()
    return exited.value.code, err


def fit_line(capsys, out, **settings) -> tuple[int, str]:
    return run_and_exit_line(capsys, lambda: fit(load_recipe(QUICKSTART, tiny_recipe_overrides(out, **settings))))


# ------------------------------------------------------------------------------------------ no code from a run dir


class Payload:
    """A pickle that, when unpickled with code execution, creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant_pickle(path: Path, marker: Path) -> None:
    """Replace ``path`` by a malicious pickle in the file's own format: a torch zip for torch files, the raw
    pickle bytes for the rest."""
    path.unlink(missing_ok=True)
    if path.suffix in (".bin", ".pkl", ".pt"):
        torch.save({"state": Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(Payload(marker)))


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    """One finished epoch of a run with EMA, whose checkpoint holds every kind of file a checkpoint has."""
    out = tmp_path_factory.mktemp("ema") / "run"
    fit(load_recipe(QUICKSTART, tiny_recipe_overrides(out, **{"train.ema_decay": 0.9})))
    return out


def test_the_ema_is_checkpointed_as_safetensors_and_nothing_as_a_custom_pickle(ema_run):
    names = sorted(p.name for p in (ema_run / "checkpoint").iterdir())
    assert "ema.safetensors" in names and not [n for n in names if n.startswith("custom_checkpoint")], names


def test_every_torch_load_of_a_resume_refuses_code(ema_run, tmp_path, monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(ema_run, out)
    real_load, calls = torch.load, []

    def checked_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", checked_load)
    fit(load_recipe(QUICKSTART, tiny_recipe_overrides(out, **{"train.ema_decay": 0.9, "train.epochs": 2,
                                                                "train.resume": True})))
    assert calls and all(weights_only is True for weights_only in calls), calls


PLANTED = ["model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl", "ema.safetensors",
           "trainer_state.json", "custom_checkpoint_0.pkl"]


@pytest.mark.parametrize("name", PLANTED)
def test_a_planted_pickle_in_the_checkpoint_is_never_run(ema_run, tmp_path, capsys, name):
    out, marker = tmp_path / "run", tmp_path / "pwned"
    shutil.copytree(ema_run, out)
    plant_pickle(out / "checkpoint" / name, marker)
    status, err = fit_line(capsys, out, **{"train.ema_decay": 0.9, "train.epochs": 2, "train.resume": True})
    assert not marker.exists(), f"{name}: the pickle ran"
    assert status == 2 and len(err.splitlines()) == 1, err
    assert f"checkpoint/{name} is damaged" in err, err


# ------------------------------------------------------------------------------------------ bad numbers and inputs


BEFORE_LOADING = {  # override -> what the one line must say
    "train.learning_rate=.inf": "train.learning_rate: expected a finite number, got inf",
    "train.weight_decay=.inf": "train.weight_decay: expected a finite number, got inf",
    "data.mean=[.nan, 0.5, 0.5]": "data.mean: expected three numbers (finite",
    "data.std=[.inf, 1, 1]": "data.std: expected three numbers (finite",
    "train.warmup_epochs=.inf": "train.warmup_epochs: expected a finite number, got inf",
    "train.time_budget_minutes=.inf": "train.time_budget_minutes: expected a finite number, got inf",
    "seed=-1": "seed: expected an integer in [0, 2**32), got -1",
    f"seed={2 ** 70}": f"seed: expected an integer in [0, 2**32), got {2 ** 70}",
    f"train.learning_rate={10 ** 400}": "train.learning_rate: expected a finite number, got an integer of 401 digits",
    f"data.std=[{10 ** 400}, 1, 1]": "data.std: expected three numbers (finite",
    "output_dir=runs/a\x00b": "output_dir: a path cannot hold a NUL byte",
}


@pytest.mark.parametrize("override", list(BEFORE_LOADING))
def test_bad_numbers_end_in_one_line_before_loading(override, tmp_path, capsys, no_loading):
    overrides = [o for o in tiny_recipe_overrides(tmp_path / "run") if not o.startswith(override.split("=")[0] + "=")]
    status, err = run_and_exit_line(capsys, lambda: fit(load_recipe(QUICKSTART, [*overrides, override])))
    assert status == 2 and len(err.splitlines()) == 1, err
    assert BEFORE_LOADING[override] in err, err


def test_a_crop_padding_larger_than_the_input_is_refused_before_the_data_loads(tmp_path, capsys, monkeypatch):
    import hfvision.pipeline as pipeline

    monkeypatch.setattr(pipeline, "load_raw", lambda *a: pytest.fail("the data was loaded"))
    status, err = fit_line(capsys, tmp_path / "run", **{"data.augment.random_crop_padding": 100000})
    assert status == 2 and err == ("error: data.augment.random_crop_padding: expected less than the input size (32), "
                                   "got 100000"), err
    status, err = fit_line(capsys, tmp_path / "run", **{"data.augment.random_crop_padding": 100000,
                                                         "data.image_size": 48})
    assert status == 2 and "expected less than data.image_size (48), got 100000" in err, err


def test_a_validation_fraction_that_leaves_no_room_for_every_class_is_one_line(tmp_path, capsys):
    status, err = fit_line(capsys, tmp_path / "run", **{"data.val_fraction": 0.999})
    assert status == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: data.val_fraction: 0.999 of ") and "choose a fraction nearer 0.1" in err


@pytest.mark.parametrize("content,message", [
    (b"seed: 1\ntrain: {epochs: 2}\n\xff\xfe\n", "is not UTF-8 text (byte 27); save it as UTF-8"),
    (b"seed: 1\ntrain:\n  epochs: 2\n  epochs: 3\n", "key 'epochs' is given twice (line 4); keep one"),
    (None, "is a directory; give the path of a .yaml recipe in it"),
    (b"? [a, b]\n: 1\n", "a key must be a name, got ['a', 'b'] (line 1)"),
])
def test_recipe_files_that_cannot_be_read_are_named_in_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "recipe.yaml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    status, err = run_and_exit_line(capsys, lambda: load_recipe(path))
    assert status == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: recipe file {path}") and message in err, err


def test_metrics_json_is_strict_json_even_with_a_non_finite_number(tmp_path):
    from hfvision.fileio import write_json_atomic

    write_json_atomic(tmp_path / "m.json", {"loss": float("nan"), "history": [{"x": float("inf")}, 1.5]})
    text = (tmp_path / "m.json").read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}")) == {"loss": None,
                                                                                  "history": [{"x": None}, 1.5]}


# ------------------------------------------------------------------------------------------ a loss that blows up


def test_a_loss_driven_non_finite_mid_run_stops_in_one_line_with_a_resumable_checkpoint(tmp_path, capsys,
                                                                                       monkeypatch):
    import hfvision.pipeline as pipeline

    out = tmp_path / "run"
    settings = {"train.epochs": 2, "train.checkpoint_every_steps": 2}
    real_forward, calls = pipeline.logits_of, []

    def poisoned_forward(model, inputs):  # batch 6 of the run gives NaN logits, as an exploding step would
        logits = real_forward(model, inputs)
        calls.append(1)
        return logits * float("nan") if len(calls) == 6 else logits

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "logits_of", poisoned_forward)  # the loop's forward
        status, err = fit_line(capsys, out, **settings)
    assert status == 2 and len(err.splitlines()) == 1, err
    assert "train: the loss became NaN or infinite at epoch 1, step 6 (optimiser step 6)" in err, err
    assert "train.learning_rate (0.003" in err and "rerun with train.resume=true" in err, err
    state = json.loads((out / "checkpoint" / "trainer_state.json").read_text())
    assert state["global_step"] == 4  # the checkpoint of step 4; nothing was saved after the NaN
    from safetensors.torch import load_file
    assert all(torch.isfinite(t).all() for t in load_file(out / "checkpoint" / "model.safetensors").values())
    metrics = fit(load_recipe(QUICKSTART, tiny_recipe_overrides(out, **settings, **{"train.resume": True})))
    assert len(metrics["history"]) == 2 and metrics["test"]["accuracy"] > 0


# ------------------------------------------------------------------------------------------ damaged checkpoints


@pytest.mark.parametrize("name,damage,reason", [
    ("model.safetensors", "truncate", "truncated"),
    ("optimizer.bin", "truncate", "not a complete torch file"),
    ("trainer_state.json", "truncate", "not valid JSON"),
    ("trainer_state.json", "mistype", "'epoch' is '1', expected an integer"),
])
def test_a_damaged_checkpoint_file_is_named_in_one_line(ema_run, tmp_path, capsys, name, damage, reason):
    out = tmp_path / "run"
    shutil.copytree(ema_run, out)
    path = out / "checkpoint" / name
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        state = json.loads(path.read_text())
        path.write_text(json.dumps({**state, "epoch": "1"}))
    status, err = fit_line(capsys, out, **{"train.ema_decay": 0.9, "train.epochs": 2, "train.resume": True})
    assert status == 2 and len(err.splitlines()) == 1, err
    assert f"checkpoint: {path} is damaged (" in err and reason in err, err
    assert "delete" in err and "start this run afresh" in err


# ------------------------------------------------------------------------------------------ a full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 48 MiB tmpfs (root only; skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_full_disk_during_a_step_checkpoint_is_one_line_and_the_previous_checkpoint_resumes_exactly(
        tmp_path, small_disk, capsys, monkeypatch):
    from hfvision.training import checkpoint, trainer

    settings = {"train.epochs": 2, "train.checkpoint_every_steps": 2, "train.batch_size": 48,
                "eval.explain": False}
    reference = fit(load_recipe(QUICKSTART, tiny_recipe_overrides(tmp_path / "reference", **settings)))
    out, filler = small_disk / "run", small_disk / "filler"
    real_save, saves = checkpoint.save_checkpoint, []

    def fill_the_disk_after_the_first(accelerator, run_dir, state, ema=None):
        if saves:  # the second checkpoint meets a full disk
            with filler.open("wb") as f:
                try:
                    while True:
                        f.write(b"\0" * (1 << 20))
                except OSError:
                    pass
        saves.append(state.global_step)
        return real_save(accelerator, run_dir, state, ema)

    with monkeypatch.context() as patch:
        patch.setattr(trainer, "save_checkpoint", fill_the_disk_after_the_first)
        status, err = fit_line(capsys, out, **settings)
    assert status == 2 and len(err.splitlines()) == 1, err
    assert "no space left on device" in err and "the previous checkpoint is intact" in err, err
    assert not list(out.glob("*.tmp")) and not list(out.rglob("*.tmp")), list(out.rglob("*.tmp"))
    assert json.loads((out / "checkpoint" / "trainer_state.json").read_text())["global_step"] == 2
    filler.unlink()
    resumed = fit(load_recipe(QUICKSTART, tiny_recipe_overrides(out, **settings, **{"train.resume": True})))
    from safetensors.torch import load_file
    ref, got = load_file(tmp_path / "reference" / "last" / "model.safetensors"), load_file(out / "last" / "model.safetensors")
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert resumed["test"]["accuracy"] == reference["test"]["accuracy"]


# ------------------------------------------------------------------------------------------ one run per directory


def test_a_second_run_on_a_busy_output_dir_is_refused_in_one_line(tmp_path, capsys, no_loading):
    from hfvision.run_dir import claim_run_dir

    recipe = load_recipe(QUICKSTART, tiny_recipe_overrides(tmp_path / "run"))
    with claim_run_dir(recipe):  # another run holds it
        status, err = fit_line(capsys, tmp_path / "run")
    assert status == 2 and err == (f"error: output_dir: {tmp_path / 'run'} is in use by another hfvision run "
                                   f"(pid {os.getpid()}); wait for it to end or choose another output_dir"), err
    with claim_run_dir(recipe):  # released when the holder ends: a dead run leaves no lock behind
        pass


@pytest.mark.slow
def test_two_runs_started_together_on_one_output_dir_exactly_one_runs(tmp_path):
    from conftest import script_command, script_env

    out = tmp_path / "run"
    command = script_command("finetune.py", QUICKSTART, *tiny_recipe_overrides(out, **{"train.epochs": 2}))
    runs = [subprocess.Popen(command, cwd=REPO, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    results = [(run.wait(timeout=600), run.stderr.read()) for run in runs]
    assert sorted(code for code, _ in results) == [0, 2], results
    refused = next(err for code, err in results if code == 2).strip()
    assert len(refused.splitlines()) == 1 and ("is in use by another hfvision run" in refused
                                               or "already holds a run" in refused), refused


# ------------------------------------------------------------------------------------------ a lost best/


def test_a_run_that_lost_best_falls_back_to_last_and_finishes(tmp_path, capsys):
    out = tmp_path / "run"
    fit(load_recipe(QUICKSTART, tiny_recipe_overrides(out)))
    shutil.rmtree(out / "best")
    capsys.readouterr()
    metrics = fit(load_recipe(QUICKSTART, tiny_recipe_overrides(out, **{"train.resume": True})))
    assert "best/ is missing from" in capsys.readouterr().out
    assert metrics["best_recovered_from"] == "last" and metrics["best_epoch"] == 1
    assert (out / "best" / "model.safetensors").read_bytes() == (out / "last" / "model.safetensors").read_bytes()
    assert json.loads((out / "metrics.json").read_text())["test"]["accuracy"] == metrics["test"]["accuracy"]


# ------------------------------------------------------------------------------------------ model dirs refused


def test_model_dirs_refused_for_safety_say_so_in_one_line(tmp_path, capsys, tiny_pretrained_dirs):
    from conftest import run_cli_in_process

    pickled, marker = tmp_path / "pickled", tmp_path / "pwned"
    shutil.copytree(tiny_pretrained_dirs["vit"], pickled)
    (pickled / "model.safetensors").unlink()
    torch.save({"weights": Payload(marker)}, pickled / "pytorch_model.bin")
    status, _, err = run_cli_in_process(capsys, "evaluate", "--model", pickled, "--data", "synthetic")
    assert status == 2 and len(err.strip().splitlines()) == 1 and not marker.exists(), err
    assert "its weights are a pickle that torch.load(weights_only=True) refuses" in err, err

    custom = tmp_path / "custom"
    shutil.copytree(tiny_pretrained_dirs["vit"], custom)
    config = json.loads((custom / "config.json").read_text())
    config.update(model_type="made_up_vit", auto_map={"AutoConfig": "configuration_x.XConfig",
                                                      "AutoModelForImageClassification": "modeling_x.X"})
    (custom / "config.json").write_text(json.dumps(config))
    status, _, err = run_cli_in_process(capsys, "evaluate", "--model", custom, "--data", "synthetic")
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert "ships its own modelling code, which hfvision never runs" in err, err


def test_under_several_processes_only_the_first_says_the_stop_line(capsys, monkeypatch):
    from hfvision.errors import RunInterrupted

    def stopped(argv):
        raise RunInterrupted("stopped by SIGTERM at epoch 1, step 3: ...", 143)

    for rank, expected in (("0", "stopped by SIGTERM at epoch 1, step 3: ..."), ("1", "")):
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(SystemExit) as exited:
            run_cli(stopped, [])
        assert exited.value.code == 143 and capsys.readouterr().err.strip() == expected


# ------------------------------------------------------------------------------------------ the feature cache


@pytest.mark.parametrize("damage", ["zeroed", "truncated", "reshaped"])
def test_a_damaged_feature_cache_entry_is_detected_and_rebuilt(damage, tmp_path, capsys, monkeypatch,
                                                              tiny_pretrained_dirs):
    from safetensors.torch import load_file, save_file

    monkeypatch.setenv("HFVISION_CACHE", str(tmp_path / "cache"))
    settings = {"model.name": str(tiny_pretrained_dirs["vit"]), "model.tuning": "head_only",
                "train.feature_cache": "on", "data.augment.random_crop_padding": 0,
                "data.augment.horizontal_flip": False, "train.learning_rate": 0.01}
    clean = fit(load_recipe(None, tiny_recipe_overrides(tmp_path / "clean", **settings)))
    entry = next(m.parent for m in (tmp_path / "cache").glob("*/meta.json")
                 if json.loads(m.read_text())["split"] == "train")
    features_file = entry / "features.safetensors"
    features = load_file(features_file)["features"].clone()  # not a view of the file it then damages
    if damage == "zeroed":
        save_file({"features": torch.zeros_like(features)}, features_file)
    elif damage == "truncated":
        features_file.write_bytes(features_file.read_bytes()[:1000])
    else:
        save_file({"features": features[:, : len(features[0]) // 2].contiguous()}, features_file)
    capsys.readouterr()
    again = fit(load_recipe(None, tiny_recipe_overrides(tmp_path / "again", **settings)))
    assert f"feature cache: the train entry {entry} is damaged (" in capsys.readouterr().out
    head = "classifier.weight"
    assert torch.equal(load_file(tmp_path / "clean" / "last" / "model.safetensors")[head],
                       load_file(tmp_path / "again" / "last" / "model.safetensors")[head])
    assert again["test"]["accuracy"] == clean["test"]["accuracy"]
    assert torch.equal(load_file(features_file)["features"], features)  # rebuilt in place


# ------------------------------------------------------------------------------------------ the demo's model box


def test_the_demo_model_box_names_what_is_wrong_with_a_long_name_or_a_non_classifier(tmp_path):
    from transformers import BertConfig

    from hfvision.errors import HfvisionError
    from hfvision.models.factory import load_model_for_inference

    sys.path.insert(0, str(REPO))
    try:
        import app
    finally:
        sys.path.remove(str(REPO))
    root = tmp_path / "root"
    (root / "text-model").mkdir(parents=True)
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(root / "text-model")
    with pytest.raises(HfvisionError, match=r"^model: a name of at most 200 characters .*got 5,000$"):
        app.choose_model("a" * 5000, root)
    with pytest.raises(HfvisionError, match=r"^--model: could not load '.*text-model': ") as info:
        load_model_for_inference(app.choose_model("text-model", root))
    assert len(str(info.value).splitlines()) == 1
