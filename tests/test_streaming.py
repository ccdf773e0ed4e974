"""``data.streaming: true``: a local folder of Parquet shards streamed by two processes; a SIGKILL mid-epoch and a
resume end at the weights of an uninterrupted streaming run; the held-out part never reaches training."""

import json
import random
import subprocess
import time

import pytest
import torch
from conftest import REPO, script_command, script_env
from test_hardening import assert_same_weights, wait_for_step_checkpoint

from hfvision.data.streaming import DecodedStream, _bucket, load_streaming_data
from hfvision.data.synthetic import load_synthetic
from hfvision.recipe import load_recipe
from hfvision.spec import InputSpec

QUICKSTART = REPO / "recipes" / "quickstart.yaml"


def parquet_shards(root, train=512, test=96, shards=4):
    """``root/data/train-0000k-of-0000n.parquet`` and one test file, written by ``datasets`` (features kept)."""
    raw = load_synthetic()
    (root / "data").mkdir(parents=True, exist_ok=True)
    part = train // shards
    for k in range(shards):
        raw["train"].select(range(k * part, (k + 1) * part)).to_parquet(
            root / "data" / f"train-{k:05d}-of-{shards:05d}.parquet")
    raw["test"].select(range(test)).to_parquet(root / "data" / "test-00000-of-00001.parquet")
    return root


def settings(out, source):
    return [f"output_dir={out}", f"data.dataset={source}", "data.streaming=true", "data.decode_workers=1",
            "data.max_eval_samples=48", "train.epochs=2", "train.batch_size=16", "train.checkpoint_every_steps=3",
            "train.report_to=none", "eval.batch_size=48", "eval.latency_batch_size=8", "eval.explain=false",
            "model.config.hidden_size=32", "model.config.num_hidden_layers=1", "model.config.intermediate_size=64"]


def finetune(*args, nproc=2, **popen):
    return subprocess.Popen(script_command("finetune.py", QUICKSTART, *args, nproc=nproc), cwd=REPO, env=script_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def test_the_held_out_images_are_never_in_the_training_stream(tmp_path):
    source = parquet_shards(tmp_path / "shards", train=256, test=32)
    recipe = load_recipe(QUICKSTART, [f"data.dataset={source}", "data.streaming=true", "data.max_eval_samples=16"])

    class OneProcess:
        process_index, num_processes, device = 0, 1, torch.device("cpu")

    data = load_streaming_data(recipe.data, recipe.seed, InputSpec(32, (0.5,) * 3, (0.5,) * 3), OneProcess(),
                               log=lambda line: None)
    stream = data.train.dataset
    assert isinstance(stream, DecodedStream) and stream.held_out == (10, 0)  # no validation split: bucket 0 of 10
    seen = [value["image"] for value in stream.stream]
    trained = sum(1 for _ in stream)
    held = sum(1 for value in seen if _bucket(value) % 10 == 0)
    assert 0 < held < len(seen) and trained == len(seen) - held
    assert len(data.validation) == 16 and len(data.test) == 16 and data.validation.store.built


@pytest.mark.slow
def test_two_processes_stream_and_a_sigkill_then_resume_ends_at_the_uninterrupted_weights(tmp_path):
    source = parquet_shards(tmp_path / "shards")
    straight = tmp_path / "straight"
    process = finetune(*settings(straight, source))
    out, err = process.communicate(timeout=900)
    assert process.returncode == 0, err[-3000:]
    assert "data: streaming; validation: the first 48 images of the train stream's images" in out
    metrics = json.loads((straight / "metrics.json").read_text())
    assert metrics["training"]["epochs"] == 2 and metrics["data"]["stores"].keys() == {"validation", "test"}

    killed = tmp_path / "killed"
    process = finetune(*settings(killed, source), start_new_session=True)
    wait_for_step_checkpoint(killed, process)
    time.sleep(random.Random().uniform(0.0, 1.0))
    subprocess.run(["pkill", "-KILL", "-s", str(process.pid)], check=False)  # torchrun and both workers
    process.communicate()
    resumed = finetune(*settings(killed, source), "train.resume=true")
    out, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0 and "resumed from" in out, err[-3000:]
    assert_same_weights(straight / "last", killed / "last")
    again = json.loads((killed / "metrics.json").read_text())
    for a, b in zip(metrics["history"], again["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)


@pytest.mark.parametrize("override, message", [
    ("train.gradient_accumulation_steps=2", "data.streaming: train.gradient_accumulation_steps must be 1"),
    ("data.classes=[0, 1]", "data.streaming: data.classes is not supported"),
    ("train.feature_cache=on", "train.feature_cache: on needs the training images stored"),
])
def test_what_a_stream_cannot_do_is_one_line(override, message):
    from hfvision.errors import HfvisionError
    with pytest.raises(HfvisionError, match=message):
        load_recipe(QUICKSTART, ["data.streaming=true", override])

