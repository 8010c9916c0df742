r"""Tests of saving and loading priors (condgen.priors.io): round trips of every savable prior
to identical draws and densities, user networks, atomic writes, and refusal of files condgen
did not write: other torch files, text, truncated or corrupted files, unknown classes or
versions, and pickles that would run code."""

from __future__ import annotations

import os
import pickle
import signal
import socket
import stat
import subprocess
import sys

import pytest
import torch
import zuko
from torch import nn

import condgen.priors
from condgen.priors import (
    MLP,
    DiffusionPrior,
    FlowMatchingPrior,
    FlowPrior,
    GaussianMixturePrior,
    Prior,
    VESchedule,
    load,
    save_prior,
)
from condgen.priors.schedules import Schedule


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def mixture() -> GaussianMixturePrior:
    means = torch.tensor([[-1.0, 0.5], [1.0, -0.5], [0.0, 2.0]], dtype=torch.float64)
    covs = torch.stack([0.2 * torch.eye(2, dtype=torch.float64)] * 3)
    return GaussianMixturePrior(
        torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64),
        means,
        covs,
        schedule=VESchedule(0.02, 30.0),
        sampler="euler",
        steps=7,
    )


class UserNet(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.layer = nn.Linear(3, width)
        self.out = nn.Linear(width, 2)

    def forward(self, x_t, t):
        return self.out(torch.tanh(self.layer(torch.cat([x_t, t[..., None]], -1))))


PRIORS = {
    "mixture": mixture,
    "diffusion": lambda: DiffusionPrior(
        MLP(2, hidden=[16, 16]),
        schedule="cosine",
        event_shape=(2,),
        prediction="noise",
        sampler="ddim",
        steps=5,
        exact_divergence=False,
    ),
    "diffusion-float64": lambda: DiffusionPrior(
        MLP(2, hidden=[8]).double(), event_shape=(2,), steps=3
    ),
    "flow-matching-given": lambda: FlowMatchingPrior(
        MLP(2, context=3, hidden=[16]), event_shape=(2,), steps=4
    ).given(torch.randn(3)),
    "flow-nsf": lambda: FlowPrior.build(2, transforms=2, hidden_features=[16, 16]),
    "flow-maf-options": lambda: FlowPrior.build(
        3, flow="maf", randperm=True, activation=nn.ELU, hidden_features=(8,)
    ),
    "flow-given": lambda: FlowPrior.build(2, context=2, flow="realnvp").given(torch.randn(4, 2)),
}


def assert_same_prior(a: Prior, b: Prior) -> None:
    assert type(a) is type(b) and a.event_shape == b.event_shape
    assert a.batch_shape == b.batch_shape
    for name in ("schedule", "sampler", "steps", "prediction", "exact_divergence", "config"):
        assert getattr(a, name, None) == getattr(b, name, None), name
    context_a, context_b = getattr(a, "context", None), getattr(b, "context", None)
    assert (context_a is None) == (context_b is None)
    if context_a is not None:
        assert torch.equal(context_a, context_b)
    torch.manual_seed(3)
    x = a.sample((16,))
    torch.manual_seed(3)
    y = b.sample((16,))
    assert x.dtype == y.dtype and torch.equal(x, y)
    if isinstance(a, GaussianMixturePrior | FlowPrior):  # exact densities, no ODE
        assert torch.equal(a.log_prob(x), b.log_prob(x))


@pytest.mark.parametrize("name", sorted(PRIORS))
def test_round_trip(name, tmp_path):
    prior = PRIORS[name]()
    prior.save(tmp_path / "prior.pt")
    assert os.listdir(tmp_path) == ["prior.pt"]  # no temporary file left
    document = torch.load(tmp_path / "prior.pt", weights_only=True)
    assert set(document) == {"format", "version", "class", "config", "state_dict"}
    assert document["format"] == "condgen-prior" and document["version"] == 1
    assert document["class"] == type(prior).__name__
    assert_same_prior(prior, load(tmp_path / "prior.pt"))


def test_round_trip_of_a_trained_flow_and_map_location(tmp_path):
    prior = FlowPrior.build(2, transforms=2, hidden_features=[16, 16])
    prior.fit(torch.randn(256, 2) * torch.tensor([1.0, 0.3]), steps=20, progress=False)
    save_prior(prior, str(tmp_path / "flow.pt"))
    loaded = condgen.priors.load(str(tmp_path / "flow.pt"), map_location="cpu")
    assert_same_prior(prior, loaded)
    assert all(p.requires_grad for p in loaded.flow.parameters())


def test_overwrite_keeps_the_file_mode(tmp_path):
    path = tmp_path / "prior.pt"
    mixture().save(path)
    os.chmod(path, 0o640)
    PRIORS["flow-nsf"]().save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert isinstance(load(path), FlowPrior)


def test_failed_save_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "prior.pt"
    mixture().save(path)
    before = path.read_bytes()

    def broken_save(obj, file):
        file.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        PRIORS["flow-nsf"]().save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["prior.pt"]


# A child process that saves a prior to argv[1] and is stopped, by a torch.save that has
# written part of the file, before the rename: it prints its PID and waits to be killed.
_KILLED_WRITER = """
import os, sys, time, torch
from condgen.priors import GaussianMixturePrior

def stuck_save(obj, file):
    file.write(b"partial archive")
    file.flush()
    print(os.getpid(), flush=True)
    time.sleep(600)

torch.save = stuck_save
GaussianMixturePrior(torch.ones(1), torch.zeros(1, 2), torch.eye(2)[None]).save(sys.argv[1])
"""


def _temporaries(directory) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".tmp"))


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="no SIGKILL on this platform")
def test_a_save_removes_what_a_killed_save_left(tmp_path):
    """A process killed with SIGKILL in the middle of a save cannot remove its temporary file
    (``.NAME.HOST.PID.XXXXXXXX.tmp``); the next save of the same path does, since that PID
    no longer runs. The child is killed once it has written part of the file (it says so on
    its stdout and then waits), so the test does not depend on timing."""
    path = tmp_path / "prior.pt"
    mixture().save(path)
    before = path.read_bytes()
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        pid = int(child.stdout.readline())
    finally:
        child.kill()  # SIGKILL
        child.wait()  # reaped: its PID no longer runs
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL and pid == child.pid
    (left,) = _temporaries(tmp_path)  # the leak: SIGKILL runs no cleanup
    assert left.startswith(f".prior.pt.{socket.gethostname()}.{pid}.")
    assert path.read_bytes() == before  # the old file is whole

    mixture().save(path)
    assert os.listdir(tmp_path) == ["prior.pt"]
    assert_same_prior(mixture(), load(path))


def test_a_save_keeps_the_temporary_files_of_running_writers(tmp_path):
    """A temporary file of a process that still runs (a concurrent save of the same path, here
    this process's own PID), one of another host, and files of other names stay; one of a
    PID that runs no process goes."""
    path = tmp_path / "prior.pt"
    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    names = {
        "running": f".prior.pt.{host}.{os.getpid()}.abc123_x.tmp",
        "other host": f".prior.pt.not-{host}.{dead.stdout.strip()}.abc123_x.tmp",
        "other file": f".other.pt.{host}.{dead.stdout.strip()}.abc123_x.tmp",
        "not ours": f".prior.pt.{host}.notes.tmp",
        "dead": f".prior.pt.{host}.{dead.stdout.strip()}.abc123_x.tmp",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"partial")
    mixture().save(path)
    kept = {label for label, name in names.items() if (tmp_path / name).exists()}
    assert kept == {"running", "other host", "other file", "not ours"}
    assert_same_prior(mixture(), load(path))


# ---------------------------------------------------------------------- networks by value


def test_user_network_needs_an_instance(tmp_path):
    prior = DiffusionPrior(UserNet(), event_shape=(2,), steps=3)
    prior.save(tmp_path / "user.pt")
    with pytest.raises(ValueError, match=r"UserNet.*network="):
        load(tmp_path / "user.pt")
    assert_same_prior(prior, load(tmp_path / "user.pt", network=UserNet()))
    with pytest.raises(ValueError, match="does not match"):
        load(tmp_path / "user.pt", network=UserNet(width=4))


def test_zuko_flow_without_config_needs_an_instance(tmp_path):
    prior = FlowPrior(zuko.flows.NICE(2, transforms=2))
    prior.save(tmp_path / "nice.pt")
    with pytest.raises(ValueError, match="network="):
        load(tmp_path / "nice.pt")
    assert_same_prior(prior, load(tmp_path / "nice.pt", network=zuko.flows.NICE(2, transforms=2)))


def test_plain_callable_denoiser(tmp_path):
    exact = mixture()
    prior = DiffusionPrior(exact.denoise, schedule=exact.schedule, event_shape=(2,), steps=3)
    prior.save(tmp_path / "callable.pt")
    with pytest.raises(ValueError, match="network="):
        load(tmp_path / "callable.pt")
    assert_same_prior(prior, load(tmp_path / "callable.pt", network=exact.denoise))


# ------------------------------------------------------------------------ what is refused


class Custom(Prior):
    def __init__(self):
        super().__init__((2,))


class CustomSchedule(Schedule):
    def __call__(self, t):
        return 1 - t, t

    def derivatives(self, t):
        return -torch.ones_like(t), torch.ones_like(t)


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


def test_unsavable_priors(tmp_path):
    with pytest.raises(TypeError, match="cannot save a Custom"):
        Custom().save(tmp_path / "x.pt")
    with pytest.raises(TypeError, match="schedule"):
        DiffusionPrior(MLP(2), schedule=CustomSchedule(), event_shape=(2,)).save(tmp_path / "x")
    with pytest.raises(TypeError, match="plain"):
        FlowPrior.build(2, activation=Swish).save(tmp_path / "x.pt")
    assert os.listdir(tmp_path) == []


def _document(**changes):
    document = {
        "format": "condgen-prior",
        "version": 1,
        "class": "FlowPrior",
        "config": {"event_shape": [2], "flow": {"name": "nsf", "config": {"features": 2}}},
        "state_dict": {},
    }
    document.update(changes)
    return document


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not a condgen prior file"),
        (b"hello, this is text\n", "not a condgen prior file"),
        ({"weights": torch.ones(3)}, "'format'"),
        ([1, 2, 3], "'format'"),
        (_document(version=2), "version 2, newer"),
        (_document(version="1"), "invalid format version"),
        (_document(**{"class": "EvilPrior"}), "unknown prior class 'EvilPrior'"),
        (_document(config={}), "malformed"),
        (_document(state_dict={"flow.x": [1.0]}), "malformed"),
        (_document(config={"event_shape": [2], "flow": {"name": "glow", "config": {}}}), "glow"),
    ],
    ids=[
        "empty",
        "text",
        "other-torch-file",
        "list",
        "newer-version",
        "bad-version",
        "unknown-class",
        "missing-config",
        "non-tensor-state",
        "unknown-flow",
    ],
)
def test_foreign_files_are_refused(tmp_path, content, message):
    path = tmp_path / "file.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(ValueError, match=message):
        load(path)


def test_missing_weights_are_refused(tmp_path):
    path = tmp_path / "prior.pt"
    PRIORS["flow-nsf"]().save(path)
    document = torch.load(path, weights_only=True)
    document["state_dict"] = {k: v for k, v in document["state_dict"].items() if "base" not in k}
    torch.save(document, path)
    with pytest.raises(ValueError, match="does not match"):
        load(path)


@pytest.mark.parametrize("where", ["truncated", "flipped"])
def test_damaged_files_are_refused(tmp_path, where):
    path = tmp_path / "prior.pt"
    PRIORS["diffusion"]().save(path)
    data = bytearray(path.read_bytes())
    if where == "truncated":
        data = data[: len(data) // 2]
    else:  # damage bytes in the middle, where the tensor data lies
        middle = len(data) // 2
        data[middle : middle + 64] = bytes(255 - b for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"not a condgen prior file|corrupted"):
        load(path)


class Payload:
    r"""Unpickling this object would create a marker file: a stand-in for arbitrary code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["pickle", "torch"])
def test_malicious_pickles_are_refused_not_executed(tmp_path, writer):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pt"
    document = _document(config={"payload": Payload(str(marker))})
    if writer == "pickle":
        with open(path, "wb") as file:
            pickle.dump(document, file)
    else:
        torch.save(document, path)
    with pytest.raises(ValueError, match="not a condgen prior file"):
        load(path)
    assert not marker.exists()


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "absent.pt")
