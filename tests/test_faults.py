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


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if a run gets as far as loading data or resolving the model."""
    import hfvision.pipeline as pipeline

    def loaded(*args, **kwargs):
        raise AssertionError("data or model were loaded before the error")
    monkeypatch.setattr(pipeline, "load_raw", loaded)
    monkeypatch.setattr(pipeline, "resolve_input_spec", loaded)


BEFORE_LOADING = {  # override -> what the one line must say
    "train.learning_rate=.inf": "train.learning_rate: expected a finite number, got inf",
    "train.weight_decay=.inf": "train.weight_decay: expected a finite number, got inf",
    "data.mean=[.nan, 0.5, 0.5]": "data.mean: expected three numbers (finite",
    "data.std=[.inf, 1, 1]": "data.std: expected three numbers (finite",
    "train.warmup_epochs=.inf": "train.warmup_epochs: expected a finite number, got inf",
    "train.time_budget_minutes=.inf": "train.time_budget_minutes: expected a finite number, got inf",
    "seed=-1": "seed: expected an integer in [0, 2**32), got -1",
    f"seed={2 ** 70}": f"seed: expected an integer in [0, 2**32), got {2 ** 70}",
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
