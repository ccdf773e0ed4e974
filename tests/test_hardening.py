"""Real-use faults: multi-process runs with the default recipe, kills and preemption mid-epoch, run dirs that
cannot be used, resuming with another recipe."""

import json
import platform
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, run_cli_in_process, script_command, script_env, tiny_recipe_overrides
from safetensors.torch import load_file

import hfvision.pipeline as pipeline
from hfvision.cli import run_cli
from hfvision.pipeline import fit
from hfvision.recipe import load_recipe
from hfvision.training.checkpoint import read_trainer_state

QUICKSTART = REPO / "recipes" / "quickstart.yaml"


def weights(model_dir):
    return load_file(str(model_dir / "model.safetensors"))


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


def run_finetune(*overrides, nproc=None, timeout=900):
    result = subprocess.run(script_command("finetune.py", QUICKSTART, *overrides, nproc=nproc), capture_output=True,
                            text=True, cwd=REPO, timeout=timeout, env=script_env())
    return result


# --------------------------------------------------------------------------------- multi-process runs


@pytest.mark.slow
def test_two_process_run_with_the_default_recipe_completes_and_resumes(tmp_path, capsys):
    """`report_to` left at its default (tensorboard): trackers are closed only after the test evaluation."""
    out = tmp_path / "ddp"
    common = [f"output_dir={out}", "data.max_train_samples=192", "data.max_eval_samples=101",
              "eval.latency_batch_size=8", "eval.explain=false"]
    first = run_finetune(*common, "train.epochs=1", nproc=2)
    assert first.returncode == 0, first.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["num_samples"] == 101 and len(metrics["history"]) == 1
    assert list((out / "logs").rglob("events.out.tfevents.*")), "the default tracker wrote nothing"
    assert not list(out.glob("*.tmp")) and not list(out.glob("*.old"))
    status, _, err = run_cli_in_process(capsys, "evaluate", "--model", out, "--data", "synthetic", "--max-samples",
                                        101, "--out", tmp_path / "one.json")
    assert status == 0, err[-2000:]
    one = json.loads((tmp_path / "one.json").read_text())["test"]
    assert one["confusion_matrix"] == metrics["test"]["confusion_matrix"]
    assert one["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-12)

    resumed = run_finetune(*common, "train.epochs=2", "train.resume=true", nproc=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    status, _, err = run_cli_in_process(capsys, "evaluate", "--model", out, "--data", "synthetic", "--max-samples",
                                        101, "--out", tmp_path / "two.json")
    assert status == 0, err[-2000:]
    assert json.loads((tmp_path / "two.json").read_text())["test"]["accuracy"] == pytest.approx(
        metrics["test"]["accuracy"], abs=1e-12)


# --------------------------------------------------------------------------------- kills and preemption

# 2 epochs of 8 batches; accumulation 2 makes 4 optimiser steps per epoch; a checkpoint every 2 steps.
KILL_SETTINGS = ["data.max_train_samples=256", "data.max_eval_samples=64", "train.epochs=2", "train.batch_size=32",
                 "train.gradient_accumulation_steps=2", "train.checkpoint_every_steps=2", "train.ema_decay=0.9",
                 "data.augment.mixup_alpha=0.2", "model.config.drop_path_rate=0.1", "train.report_to=none",
                 "eval.batch_size=64", "eval.latency_batch_size=8", "eval.explain=false"]


def wait_for_step_checkpoint(run_dir, process, timeout=600):
    """Until ``checkpoint/`` holds a mid-epoch state; returns it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = read_trainer_state(run_dir / "checkpoint") if (run_dir / "checkpoint").exists() else None
        if state and state.batch > 0:
            return state
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.05)
    raise AssertionError("no step checkpoint was written")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("kill") / "straight"
    result = run_finetune(f"output_dir={out}", *KILL_SETTINGS)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path, uninterrupted):
    out = tmp_path / "killed"
    process = subprocess.Popen(script_command("finetune.py", QUICKSTART, f"output_dir={out}", *KILL_SETTINGS),
                               cwd=REPO, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step_checkpoint(out, process)
    time.sleep(random.Random().uniform(0.0, 1.5))  # somewhere later in the run, mid-step or mid-save
    process.send_signal(signal.SIGKILL)
    process.communicate()
    resumed = run_finetune(f"output_dir={out}", *KILL_SETTINGS, "train.resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(uninterrupted / "last", out / "last")
    assert_same_weights(uninterrupted / "best", out / "best")
    straight = json.loads((uninterrupted / "metrics.json").read_text())
    again = json.loads((out / "metrics.json").read_text())
    for a, b in zip(straight["history"], again["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["val_accuracy"] == b["val_accuracy"]


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_exits_with_one_line_and_resumes_exactly(tmp_path, uninterrupted):
    out = tmp_path / "preempted"
    process = subprocess.Popen(script_command("finetune.py", QUICKSTART, f"output_dir={out}", *KILL_SETTINGS),
                               cwd=REPO, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step_checkpoint(out, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode in (0, 143), stderr[-2000:]
    last_line = stderr.strip().splitlines()[-1]
    assert last_line.startswith("stopped by SIGTERM at epoch ") and "train.resume=true" in last_line
    assert "Traceback" not in stderr
    state = read_trainer_state(out / "checkpoint")
    assert state.global_step > 0
    resumed = run_finetune(f"output_dir={out}", *KILL_SETTINGS, "train.resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(uninterrupted / "last", out / "last")


def test_a_stop_signal_in_process_checkpoints_at_the_next_step(tmp_path, monkeypatch):
    """The same mechanism without a subprocess: the signal arrives during step 3; the run stops after it."""
    from hfvision.errors import RunInterrupted
    from hfvision.training import trainer

    original = trainer.StepCheckpoints.after_step

    def signal_at_step_3(self, epoch, batches_done, totals, seconds):
        if self.state.global_step == 3:
            signal.raise_signal(signal.SIGUSR1)
        return original(self, epoch, batches_done, totals, seconds)

    monkeypatch.setattr(trainer.StepCheckpoints, "after_step", signal_at_step_3)
    recipe = load_recipe(QUICKSTART, tiny_recipe_overrides(tmp_path / "run", **{"train.epochs": 2}))
    with pytest.raises(RunInterrupted) as stopped:
        fit(recipe)
    assert stopped.value.exit_code == 128 + signal.SIGUSR1
    assert "stopped by SIGUSR1 at epoch 1, step 3" in str(stopped.value)
    state = read_trainer_state(tmp_path / "run" / "checkpoint")
    assert (state.epoch, state.batch, state.global_step) == (0, 3, 3)
    assert state.partial_epoch["totals"][2] == 96  # three batches of 32 images seen
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # the handler is removed again


# --------------------------------------------------------------------------------- errors before loading


def one_line_error(recipe_overrides, capsys) -> str:
    def main(argv):
        fit(load_recipe(QUICKSTART, recipe_overrides))
    with pytest.raises(SystemExit) as exited:
        run_cli(main, [])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_output_dir_that_is_a_file_fails_before_loading(tmp_path, capsys, no_loading):
    target = tmp_path / "taken"
    target.write_text("not a directory")
    err = one_line_error(tiny_recipe_overrides(target), capsys)
    assert err == f"error: output_dir: {target} is a file, not a directory; choose another output_dir"
    err = one_line_error(tiny_recipe_overrides(target / "run"), capsys)
    assert "is a file, not a directory" in err


def test_output_dir_that_cannot_be_written_fails_before_loading(capsys, no_loading):
    # /proc refuses new entries even to root, so this holds wherever the suite runs
    err = one_line_error(tiny_recipe_overrides("/proc/hfvision-run"), capsys)
    assert err.startswith("error: output_dir: cannot write to /proc/hfvision-run (")
    assert err.endswith("choose a directory you can write to")


def test_resume_with_another_architecture_names_the_keys_before_loading(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    fit(load_recipe(QUICKSTART, tiny_recipe_overrides(out)))
    capsys.readouterr()
    monkeypatch.setattr(pipeline, "load_raw", lambda *a: (_ for _ in ()).throw(AssertionError("loaded")))
    err = one_line_error(tiny_recipe_overrides(out, **{"train.resume": True, "model.config.hidden_size": 32,
                                                       "train.learning_rate": 0.01, "train.epochs": 3}), capsys)
    assert err.startswith(f"error: train.resume: {out} was trained with another recipe: ")
    assert "model.config.hidden_size (64 -> 32)" in err and "train.learning_rate (0.003 -> 0.01)" in err
    assert "train.epochs" not in err  # more epochs is a way to continue a run, not another run


def test_existing_run_without_resume_is_refused(tmp_path, capsys, no_loading):
    out = tmp_path / "run"
    (out / "checkpoint").mkdir(parents=True)
    err = one_line_error(tiny_recipe_overrides(out), capsys)
    assert "already holds a run; pass train.resume=true" in err


def test_an_older_epoch_end_trainer_state_reads_with_fresh_values_for_new_keys(tmp_path):
    old = {"epoch": 2, "history": [{"epoch": 1}, {"epoch": 2}], "best_val_accuracy": 0.5, "best_epoch": 2,
           "epochs_without_improvement": 0, "stopped_early": False}  # what main wrote before step checkpoints
    (tmp_path / "trainer_state.json").write_text(json.dumps(old))
    state = read_trainer_state(tmp_path)
    assert state.epoch == 2 and state.best_epoch == 2 and len(state.history) == 2
    assert (state.batch, state.global_step, state.partial_epoch, state.budget_spent) == (0, 0, None, False)


MALLOC_PROBE = """
import resource, sys, torch
from hfvision.process import reuse_freed_memory

def faults_per_batch(batches):
    faults = []
    for _ in range(batches):  # a 128-image float batch at 224 px (77 MB), allocated, written and freed
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.empty(128, 3, 224, 224).fill_(1.0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return faults

default = faults_per_batch(5)
changed = reuse_freed_memory()
reused = faults_per_batch(30)  # glibc settles on reusing the block after a few batches
print(changed, min(default), max(reused[-10:]))
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_commands_reuse_freed_batch_memory_instead_of_faulting_it_in_again():
    env = {k: v for k, v in script_env().items() if not (k.startswith("MALLOC_") or k == "GLIBC_TUNABLES")}
    changed, default_faults, reused_faults = subprocess.run(
        [sys.executable, "-c", MALLOC_PROBE], env=env, capture_output=True, text=True, check=True).stdout.split()
    if changed != "True":
        pytest.skip("this glibc refuses a 1 GiB mmap threshold (2.30 does)")
    if int(default_faults) < 1_000:
        pytest.skip("batches are not faulted in page by page here (huge pages or large pages)")
    assert int(reused_faults) * 100 <= int(default_faults)  # 4 KiB pages: 18,816 faults per batch before, 0 after
    # a user's own malloc settings are left alone
    left_alone = subprocess.run([sys.executable, "-c", "from hfvision.process import reuse_freed_memory as r; print(r())"],
                                env={**env, "MALLOC_ARENA_MAX": "2"}, capture_output=True, text=True, check=True)
    assert left_alone.stdout.strip() == "False"
