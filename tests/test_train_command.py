r"""``condgen train``: the command line's fit is the Python API's, under torchrun too.

The truth of each check is an independent route to the same weights: the Python API called
with the same seed and options (``torch.manual_seed(seed)``, the network, ``prior.fit``), an
uninterrupted run for a resumed one, and the one-process run for ``torchrun
--nproc_per_node=2`` (gloo on the CPU; within ``rtol=1e-5, atol=1e-6`` as in
``tests/test_distributed.py``, the split sums round differently). Every run uses one torch
thread, so the one-process comparisons are to rounding (``rtol=1e-6, atol=1e-7``), and they
are bitwise equal on one machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zuko
from torch.optim.optimizer import register_optimizer_step_pre_hook

import condgen
from condgen.cli import main
from condgen.priors import MLP, DiffusionPrior, FlowMatchingPrior, FlowPrior, UNet

# the fit of the subprocess runs: a small denoiser MLP, 30 steps of minibatches of 32
OPTIONS = ["--steps", "30", "--batch-size", "32", "--lr", "3e-3", "--ema", "0.5"]
OPTIONS += ["--seed", "7", "--hidden", "16", "16", "--threads", "1"]


def _samples(shape: tuple[int, ...]) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(shape, generator=generator) * 0.7 + 0.3


def _weights(path: Path) -> dict[str, torch.Tensor]:
    prior = condgen.priors.load(path)
    return (prior.flow if isinstance(prior, FlowPrior) else prior.network).state_dict()


def _assert_same(found: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], **tol):
    assert found.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(found[name], value, **tol)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    r"""The same 256 samples of 3 coordinates as ``data.npy`` and ``data.pt``."""
    folder = tmp_path_factory.mktemp("train")
    data = _samples((256, 3))
    np.save(folder / "data.npy", data.numpy())
    torch.save(data, folder / "data.pt")
    return {"folder": folder, "npy": folder / "data.npy", "pt": folder / "data.pt"}


@pytest.fixture(scope="module")
def one_process(files: dict[str, Path]) -> tuple[Path, str]:
    r"""``python -m condgen train data.npy`` with :data:`OPTIONS`: the prior file and the
    standard output."""
    out = files["folder"] / "one.pt"
    command = [sys.executable, "-m", "condgen", "train", str(files["npy"]), "--out", str(out)]
    done = subprocess.run([*command, *OPTIONS], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_command_line_fits_as_the_api(one_process: tuple[Path, str], one_thread: None):
    out, printed = one_process
    torch.manual_seed(7)
    prior = DiffusionPrior(MLP(3, hidden=(16, 16)), event_shape=(3,))
    prior.fit(_samples((256, 3)), steps=30, batch_size=32, lr=3e-3, ema=0.5, progress=False)
    loaded = condgen.priors.load(out)
    assert type(loaded) is DiffusionPrior and loaded.event_shape == (3,)
    assert loaded.prediction == "denoiser" and repr(loaded.schedule) == repr(prior.schedule)
    _assert_same(_weights(out), prior.network.state_dict(), rtol=1e-6, atol=1e-7)
    assert "on 256 samples of shape [3]" in printed and "1 process x 1 thread" in printed
    assert f"saved to {out}" in printed


# options of the other networks and priors, and the API calls that they must equal
CASES = {
    "diffusion": (
        (256, 3),
        "--schedule cosine --prediction noise --clip 0 --weight-decay 0.1 --autocast bfloat16",
        lambda: DiffusionPrior(MLP(3), "cosine", event_shape=(3,), prediction="noise"),
        {"clip": 0.0, "weight_decay": 0.1, "ema": 0.999, "autocast": torch.bfloat16},
    ),
    "flow-matching": (
        (32, 1, 4, 4),
        "--base 8 --levels 1 --ema 0",
        lambda: FlowMatchingPrior(UNet(1, base=8, levels=1), event_shape=(1, 4, 4)),
        {"ema": 0.0},
    ),
    "flow": (
        (256, 3),
        "--flow maf --transforms 2 --hidden 16",
        lambda: FlowPrior(zuko.flows.MAF(3, transforms=2, hidden_features=[16])),
        {},
    ),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_each_prior_fits_as_the_api(kind: str, tmp_path: Path, one_thread: None, capsys):
    shape, options, build, fit_options = CASES[kind]
    data = tmp_path / "data.pt"
    torch.save(_samples(shape), data)
    out = tmp_path / "prior.pt"
    argv = ["train", str(data), "--out", str(out), "--prior", kind, *options.split()]
    assert main([*argv, "--steps", "12", "--batch-size", "16", "--seed", "3", "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    torch.manual_seed(3)
    prior = build()
    prior.fit(_samples(shape), steps=12, batch_size=16, progress=False, **fit_options)
    expected = prior.flow if kind == "flow" else prior.network
    assert type(condgen.priors.load(out)) is type(prior)
    _assert_same(_weights(out), expected.state_dict(), rtol=1e-6, atol=1e-7)


def test_torchrun_two_processes_fit_as_one(files: dict[str, Path], one_process: tuple[Path, str]):
    out = files["folder"] / "two.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node=2", "-m", "condgen", "train", str(files["pt"])]
    command += ["--out", str(out), *OPTIONS]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("saved to") == 1 and "2 processes x 1 thread" in done.stdout
    _assert_same(_weights(out), _weights(one_process[0]), rtol=1e-5, atol=1e-6)


class _Killed(Exception):
    r"""Stands for a kill: raised in an optimiser step, it ends the command like one."""


def test_rerun_after_a_kill_resumes(files, one_process, tmp_path: Path, one_thread: None, capsys):
    checkpoint, out = tmp_path / "fit.ckpt", tmp_path / "prior.pt"
    argv = ["train", str(files["npy"]), "--out", str(out), *OPTIONS]
    argv += ["--checkpoint", str(checkpoint), "--every", "10"]
    steps = 0

    def kill_at_step_25(optimizer, args, kwargs):
        nonlocal steps
        steps += 1
        if steps == 25:  # after the checkpoint of step 20
            raise _Killed

    handle = register_optimizer_step_pre_hook(kill_at_step_25)
    try:
        with pytest.raises(_Killed):
            main(argv)
        assert checkpoint.exists() and not out.exists()
        steps = 0
        assert main(argv) == 0
    finally:
        handle.remove()
    assert steps == 10  # steps 21 to 30
    assert "resuming from the checkpoint" in capsys.readouterr().out
    _assert_same(_weights(out), _weights(one_process[0]), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.pt", None, "does not exist"),
        ("nan.pt", torch.tensor([[0.0, 1.0], [float("nan"), 2.0], [1.0, 1.0]]), "1 NaN"),
        ("flat.pt", torch.randn(10), "shape (10,), but the samples must be shaped [N, *event]"),
        ("cube.npy", np.zeros((10, 2, 3)), "each sample has shape [2, 3], but condgen train"),
        ("dict.pt", {"x": torch.randn(10, 2)}, "holds a dict, not a tensor"),
        ("data.csv", "1,2\n3,4\n", "unknown type (.csv): give a .pt file holding one tensor"),
    ],
)
def test_bad_data_is_a_clear_error(name, content, message, tmp_path: Path, capsys):
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, np.ndarray):
        np.save(path, content)
    elif content is not None:
        torch.save(content, path)
    assert main(["train", str(path), "--out", str(tmp_path / "prior.pt")]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"condgen train: error: data file {str(path)!r}")
    assert message in error and "Traceback" not in error
    assert not (tmp_path / "prior.pt").exists()


@pytest.mark.parametrize(
    "options, message",
    [
        (["--prior", "gan"], "argument --prior: invalid choice: 'gan'"),
        (["--prior", "flow", "--ema", "0.9"], "--ema does not apply"),
        (["--transforms", "3"], "--transforms does not apply"),
        (["--every", "5"], "--every needs --checkpoint"),
        (["--prior", "flow", "--steps", "0"], "--steps must be an integer of at least 1"),
        (["--threads", "0"], "--threads must be an integer of at least 1"),
    ],
)
def test_bad_options_are_a_clear_error(options, message, files, tmp_path: Path, capsys):
    argv = ["train", str(files["pt"]), "--out", str(tmp_path / "prior.pt"), *options]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's refusal
        code = exit_.code
    assert code == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error


def test_help_names_torchrun(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    assert "usage: condgen train" in printed and "torchrun --nproc_per_node" in printed
