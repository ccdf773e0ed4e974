import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from hfvision.errors import HfvisionError, RecipeError
from hfvision.sweep import expand, parse_grid_option, run_sweep

TINY = ["data.max_train_samples=96", "data.max_eval_samples=48", "train.epochs=1", "train.batch_size=32",
        "train.report_to=none", "eval.latency_batch_size=4", "eval.explain=false"]


def test_grid_and_variants_expand_in_order():
    runs = expand({"model.config.patch_size": [4, 8], "train.epochs": [1]}, {}, None)
    assert [r.name for r in runs] == ["patch_size=4-epochs=1", "patch_size=8-epochs=1"]
    assert runs[1].overrides == ["model.config.patch_size=8", "train.epochs=1"]
    runs = expand({"model.tuning": ["head_only", "full"]}, {"a": {"seed": 1}, "b": {"seed": 2}}, "{tuning}")
    assert [r.name for r in runs] == ["a_head_only", "a_full", "b_head_only", "b_full"]
    assert runs[2].overrides == ["seed=2", "model.tuning=head_only"]
    assert parse_grid_option("model.config.pooling=cls,mean") == ("model.config.pooling", ["cls", "mean"])
    with pytest.raises(RecipeError, match="same name"):
        expand({"a.x": [1, 2], "b.y": [3]}, {}, "{y}")
    with pytest.raises(RecipeError, match="'nope' is not a swept key"):
        expand({"a.x": [1]}, {}, "{nope}")


@pytest.mark.slow
def test_two_by_two_sweep_makes_four_runs_one_table_and_skips_finished(tmp_path):
    grid = ["model.config.hidden_size=32,64", "model.config.num_hidden_layers=1,2"]
    overrides = TINY + [f"output_dir={tmp_path / 'sweep'}"]
    calls = []

    from hfvision.pipeline import fit

    def counting_fit(recipe):
        calls.append(recipe.output_dir)
        return fit(recipe)

    sweep_dir, rows = run_sweep(REPO / "recipes" / "quickstart.yaml", grid, overrides, "w{hidden_size}_l{num_hidden_layers}",
                                fit=counting_fit)
    names = ["w32_l1", "w32_l2", "w64_l1", "w64_l2"]
    assert [r["run"] for r in rows] == names and len(calls) == 4
    for row in rows:  # the right values in the right rows
        config = json.loads((sweep_dir / row["run"] / "best" / "config.json").read_text())
        assert f"w{config['hidden_size']}_l{config['num_hidden_layers']}" == row["run"]
        metrics = json.loads((sweep_dir / row["run"] / "metrics.json").read_text())
        assert row["parameters"] == metrics["model"]["parameters"]
        assert row["test_accuracy"] == metrics["test"]["accuracy"]
    assert rows[0]["parameters"] < rows[1]["parameters"] < rows[3]["parameters"]
    table = (sweep_dir / "comparison.md").read_text().splitlines()
    assert len(table) == 6 and all(f"| {n} |" in line for n, line in zip(names, table[2:]))
    assert (sweep_dir / "comparison.csv").is_file() and (sweep_dir / "comparison_curves.png").is_file()
    # a second run skips the finished runs, via the CLI
    result = subprocess.run([sys.executable, "-m", "hfvision", "sweep", str(REPO / "recipes" / "quickstart.yaml"),
                             *overrides, "--grid", grid[0], "--grid", grid[1], "--name-template",
                             "w{hidden_size}_l{num_hidden_layers}"], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("finished, skipped") == 4


def load_sweep_script():
    """The sweep command as ``hfvision sweep`` runs it, minus run_cli's printing of errors."""
    from types import SimpleNamespace

    from hfvision.commands import sweep

    return SimpleNamespace(main=lambda argv: sweep.run(sweep.parse_args(argv)))


def test_sweep_cli_takes_overrides_after_grid_options_as_in_its_docstring(tmp_path, monkeypatch, capsys):
    import hfvision.pipeline

    seen = []

    def fake_fit(recipe):  # records the resolved run and leaves the metrics.json a finished run has
        seen.append((recipe.model.config["patch_size"], recipe.model.config["num_hidden_layers"], recipe.train.epochs,
                     recipe.output_dir))
        out = Path(recipe.output_dir)
        out.mkdir(parents=True)
        (out / "metrics.json").write_text(json.dumps({"test": {"accuracy": 0.5, "macro_f1": 0.4}, "model": {}}))

    monkeypatch.setattr(hfvision.pipeline, "fit", fake_fit)
    sweep = load_sweep_script()
    out = tmp_path / "patch_depth"
    # the docstring's command, word for word except the output dir
    sweep.main(["recipes/quickstart.yaml", "--grid", "model.config.patch_size=4,8",
                "--grid", "model.config.num_hidden_layers=1,2", f"output_dir={out}", "train.epochs=2"])
    names = ["patch_size=4-num_hidden_layers=1", "patch_size=4-num_hidden_layers=2",
             "patch_size=8-num_hidden_layers=1", "patch_size=8-num_hidden_layers=2"]
    assert seen == [(4, 1, 2, str(out / names[0])), (4, 2, 2, str(out / names[1])),
                    (8, 1, 2, str(out / names[2])), (8, 2, 2, str(out / names[3]))]
    assert [line.split(" | ")[0] for line in (out / "comparison.md").read_text().splitlines()[2:]] == \
        [f"| {n}" for n in names]
    # options in between overrides and before the recipe work too; an unknown option is one line, exit 2
    seen.clear()
    sweep.main(["--grid", "model.config.patch_size=4", "recipes/quickstart.yaml", f"output_dir={tmp_path / 'b'}",
                "--name-template", "p{patch_size}", "train.epochs=3"])
    assert [(s[0], s[2], Path(s[3]).name) for s in seen] == [(4, 3, "p4")]
    with pytest.raises(HfvisionError) as info:  # run_cli prints it as one line and exits with 2
        sweep.main(["recipes/quickstart.yaml", "--grdi", "model.config.patch_size=4", "train.epochs=1"])
    assert str(info.value) == \
        "sweep: unknown argument '--grdi'; options are --grid, --name-template, and overrides are key=value"
