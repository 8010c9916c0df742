"""The condgen command line end to end, on small settings."""

import os
import subprocess
import sys

import pandas as pd
import pytest

from condgen.cli import main, parse_spec

COMMANDS = ["demo", "compare", "tasks", "methods", "prepare", "train"]


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)])
def test_help_everywhere(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    assert "usage: condgen" in capsys.readouterr().out


def test_tasks_and_methods_list_what_exists(capsys):
    assert main(["tasks"]) == 0
    listed = capsys.readouterr().out
    for name in ("gmm", "gmm-circle", "gaussian-linear", "two-moons", "beta-binomial"):
        assert f"\n{name} " in f"\n{listed}"
    assert main(["methods"]) == 0
    listed = capsys.readouterr().out
    assert "nuts" in listed and "bayesian" in listed and "dps" in listed and "guidance" in listed


def test_compare_writes_the_promised_files(tmp_path, capsys):
    out = tmp_path / "results"
    code = main(
        [
            "compare",
            "--task",
            "gmm-circle",
            "--methods",
            "tds:steps=50",
            "dps:steps=50,scale=0.3",
            "nope",
            "--seeds",
            "2",
            "--num-samples",
            "200",
            "--reference-samples",
            "2000",
            "--metrics",
            "mean_err",
            "sw",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "reference: exact draws" in printed and "tds:steps=50" in printed
    names = {p.name for p in out.iterdir()}
    expected = {"table.md", "table.csv", "runs.csv", "draws.png"}
    assert expected | {"tds_steps_50.nc", "dps_steps_50_scale_0.3.nc"} == names
    table = pd.read_csv(out / "table.csv")
    assert list(table["method"]) == ["tds:steps=50", "dps:steps=50,scale=0.3", "nope"]
    assert list(table["seeds"]) == [2, 2, 0]
    assert "unknown method 'nope'" in table.loc[2, "error"]
    assert (table.loc[:1, "sw"] > 0).all() and table.loc[:1, "sw_sd"].notna().all()
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 5
    assert "| tds:steps=50 |" in (out / "table.md").read_text()


def test_compare_quiet_prints_nothing(tmp_path, capsys):
    argv = ["compare", "--task", "normal-normal", "--methods", "importance", "--quiet"]
    assert main([*argv, "--num-samples", "100", "--reference-samples", "500"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""


def test_bad_input_is_a_clear_error(capsys):
    assert main(["compare", "--task", "nope"]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
    assert main(["compare", "--task", "gmm", "--option", "dim=7"]) == 2
    assert "dim" in capsys.readouterr().err
    assert main(["compare", "--task", "gmm", "--option", "colour=3"]) == 2
    assert "colour" in capsys.readouterr().err


def test_parse_spec():
    assert parse_spec("nuts") == ("nuts", {})
    assert parse_spec("tds:steps=200,twist_schedule=constant") == (
        "tds",
        {"steps": 200, "twist_schedule": "constant"},
    )
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_spec("tds:steps")


def test_import_prints_no_warning(tmp_path):
    """A fresh machine (no ArviZ cache) imports condgen without ArviZ's FutureWarning banner."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "PYTHONWARNINGS": "default"}
    done = subprocess.run(
        [sys.executable, "-c", "import condgen"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
