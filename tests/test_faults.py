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
