r"""Resumable fits: ``fit(..., checkpoint=path, every=N)`` of the one trainer.

A fit killed with SIGKILL in a subprocess, then rerun with the same call, must end with the
weights and losses of an uninterrupted fit of the same seed. The child blocks in an optimiser
step hook at a fixed step, after the checkpoints before it are on disk, and says so on its
standard output; only then does the parent kill it, so where it stops is deterministic. The
comparison is to float tolerance (``rtol=1e-6``), though the fits are bitwise equal on one
machine: the same operations on the same state in the same order.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
import zuko
from torch.optim.optimizer import register_optimizer_step_pre_hook

import condgen
from condgen._training import Trainer, shuffled
from condgen.amortized import NPE
from condgen.priors import MLP, DiffusionPrior, FlowPrior

STEPS, EVERY, STOP = 60, 10, 35  # the prior's steps, its checkpoints, where the child blocks
NPE_STOP = 65  # an optimiser step in the NPE's 6th epoch (12 steps each), after 5 checkpoints


def _prior_fit(
    checkpoint: str | None, generator: bool = False
) -> tuple[torch.nn.Module, list[float]]:
    r"""A small conditional diffusion prior, fitted from a seed: its minibatches, noise and
    context dropout drawn from the global generator, or from an explicit ``generator``."""
    torch.manual_seed(0)
    data = torch.randn(256, 2)
    context = torch.randn(256, 1)
    prior = DiffusionPrior(MLP(2, context=1, hidden=(16, 16)), event_shape=(2,))
    losses = prior.fit(
        data, context=context, context_dropout=0.2, steps=STEPS, batch_size=32,
        progress=False, checkpoint=checkpoint, every=EVERY,
        generator=torch.Generator().manual_seed(3) if generator else None,
    )  # fmt: skip
    return prior.network, losses


def _flow_fit(checkpoint: str | None) -> tuple[torch.nn.Module, list[float]]:
    r"""A small flow prior, fitted by maximum likelihood from a seed (minibatches from the
    global generator)."""
    torch.manual_seed(0)
    data = torch.randn(256, 2) @ torch.tensor([[1.0, 0.5], [0.0, 0.5]])
    prior = FlowPrior(zuko.flows.MAF(2, transforms=2, hidden_features=(16,)))
    losses = prior.fit(
        data, steps=STEPS, batch_size=32, progress=False, checkpoint=checkpoint, every=EVERY
    )
    return prior.flow, losses


def _model() -> None:
    theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    pyro.sample("y", dist.Normal(theta, 0.5).to_event(1))


def _npe_fit(checkpoint: str | None) -> tuple[torch.nn.Module, list[float]]:
    r"""A small NPE, fitted from a seed, whose validation loss does not improve at epochs 5,
    6, 9, 11 and 12, so that the learning rate halves after epochs 6 and 12 (the plateau
    counter is 1 at the checkpoint of epoch 5: the resumed fit must restore it)."""
    torch.manual_seed(0)
    npe = NPE(_model, observed=["y"], transforms=1, hidden_features=(16,))
    losses = npe.fit(
        num_simulations=400, max_epochs=12, batch_size=30, lr=0.05, ema=0.5, patience=4,
        lr_decay=0.5, progress=False, seed=1, checkpoint=checkpoint, every=1,
    )  # fmt: skip
    return npe, losses + npe.validation_losses


FITS = {
    "prior": (_prior_fit, STOP),
    "prior-generator": (partial(_prior_fit, generator=True), STOP),
    "flow": (_flow_fit, STOP),
    "npe": (_npe_fit, NPE_STOP),
}


def _child(case: str, checkpoint: str) -> None:
    r"""Runs a fit that blocks at the optimiser step ``stop`` and says ``ready`` there."""
    torch.set_num_threads(1)  # as the tests run
    fit, stop = FITS[case]
    count = 0

    def hook(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        nonlocal count
        count += 1
        if count == stop + 1:
            assert os.path.exists(checkpoint)
            print("ready", flush=True)
            time.sleep(600)

    register_optimizer_step_pre_hook(hook)
    fit(checkpoint)
    print("finished", flush=True)


def _assert_same(a: tuple[torch.nn.Module, list[float]], b: tuple[torch.nn.Module, list[float]]):
    torch.testing.assert_close(a[0].state_dict(), b[0].state_dict(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(a[1], b[1], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("case", list(FITS))
def test_resume_after_sigkill(case: str, tmp_path: Path):
    r"""A fit killed part-way (the prior, with the global generator or its own, at step 35 of
    60, after checkpoints at 10, 20, 30; the NPE in its 6th epoch, after checkpoints at
    epochs 1-5) and rerun with the same call ends with the weights, step or epoch losses and
    validation losses of an uninterrupted fit; a third call finds the finished checkpoint and
    returns the same at once."""
    checkpoint = str(tmp_path / "fit.pt")
    env = {**os.environ, "PYTHONPATH": str(Path(condgen.__file__).parents[1])}
    child = subprocess.Popen(
        [sys.executable, __file__, case, checkpoint], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert child.stdout.readline().strip() == "ready"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    fit, _ = FITS[case]
    reference = fit(None)
    torch.manual_seed(12345)  # the checkpoint's random state, not this one, must drive the fit
    _assert_same(fit(checkpoint), reference)
    torch.manual_seed(6789)
    _assert_same(fit(checkpoint), reference)


def test_resume_within_a_shuffled_epoch(tmp_path: Path):
    r"""A checkpoint taken inside an epoch whose minibatches are drawn at its start (a
    shuffled epoch, here the only one) resumes with the same minibatches: the trainer redraws
    them from the random state of the epoch's start. Interrupted at step 5 of 8, after the
    checkpoint of step 4, the fit ends as the uninterrupted one."""
    checkpoint = str(tmp_path / "fit.pt")
    x = torch.randn(64, 1)

    def fit(checkpoint: str | None, stop: int | None = None):
        torch.manual_seed(0)
        layer = torch.nn.Linear(1, 1)
        trainer = Trainer(layer, lr=0.05, ema=0.9)

        def loss(index: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
            if trainer.count == stop:
                raise KeyboardInterrupt
            return (layer(x[index]) - 3 * x[index]).square().mean()

        batches = shuffled(torch.arange(64), 8)
        history = trainer.fit(loss, batches, progress=False, checkpoint=checkpoint, every=2)
        return layer, history.steps

    reference = fit(None)
    with pytest.raises(KeyboardInterrupt):
        fit(checkpoint, stop=5)
    _assert_same(fit(checkpoint), reference)


def test_finished_checkpoint_returns_at_once(tmp_path: Path):
    r"""A rerun over a finished checkpoint takes no optimiser step and returns the stored
    losses, with the final weights loaded."""
    checkpoint = str(tmp_path / "fit.pt")
    reference = _prior_fit(checkpoint)
    steps = []
    hook = register_optimizer_step_pre_hook(lambda *_: steps.append(1))
    try:
        _assert_same(_prior_fit(checkpoint), reference)
    finally:
        hook.remove()
    assert steps == []


def test_mismatched_checkpoint_names_the_argument(tmp_path: Path):
    r"""A checkpoint of another fit (other steps, other data, another network) is refused
    with a ValueError naming ``checkpoint``, and left as it was."""
    checkpoint = tmp_path / "fit.pt"
    data = torch.randn(64, 2)
    DiffusionPrior(MLP(2, hidden=(8,)), event_shape=(2,)).fit(
        data, steps=5, progress=False, checkpoint=checkpoint
    )
    before = checkpoint.read_bytes()
    others = [
        (MLP(2, hidden=(8,)), data, 6),
        (MLP(2, hidden=(8,)), data + 1, 5),
        (MLP(2, hidden=(9,)), data, 5),
    ]
    for network, values, steps in others:
        prior = DiffusionPrior(network, event_shape=(2,))
        with pytest.raises(ValueError, match=r"checkpoint=.*another fit"):
            prior.fit(values, steps=steps, progress=False, checkpoint=checkpoint)
    assert checkpoint.read_bytes() == before


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
