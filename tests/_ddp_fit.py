r"""The fits of ``tests/test_distributed.py``, run in one process there and by
``torchrun --standalone --nproc_per_node=2 tests/_ddp_fit.py CASE OUT`` here, which saves rank
0's final weights and losses to ``OUT`` with ``torch.save``."""

from __future__ import annotations

import sys

import pyro
import pyro.distributions as dist
import torch

from condgen.amortized import NPE
from condgen.priors import MLP, DiffusionPrior


def prior_fit() -> tuple[dict[str, torch.Tensor], list[float]]:
    r"""A small diffusion prior: 30 steps of minibatches of 32, its minibatches and noise
    drawn from the global generator."""
    torch.manual_seed(0)
    data = torch.randn(256, 2) * 0.5 + 1.0
    prior = DiffusionPrior(MLP(2, hidden=(16, 16)), event_shape=(2,))
    losses = prior.fit(data, steps=30, batch_size=32, progress=False)
    return prior.network.state_dict(), losses


def _model() -> None:
    theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    pyro.sample("y", dist.Normal(theta, 0.5).to_event(1))


def npe_fit() -> tuple[dict[str, torch.Tensor], list[float]]:
    r"""A small NPE over 3 epochs of shuffled minibatches of 25 (shards of 12 and 13 items,
    and a smaller last minibatch), with validation and an EMA."""
    torch.manual_seed(0)
    npe = NPE(_model, observed=["y"], transforms=1, hidden_features=(16,))
    losses = npe.fit(
        num_simulations=300, max_epochs=3, batch_size=25, lr=0.01, ema=0.5, progress=False,
        seed=1,
    )  # fmt: skip
    return npe.state_dict(), losses + npe.validation_losses


FITS = {"prior": prior_fit, "npe": npe_fit}

if __name__ == "__main__":
    case, out = sys.argv[1:]
    state, losses = FITS[case]()
    rank = torch.distributed.get_rank()
    if rank == 0:
        torch.save({"state": state, "losses": losses}, out)
    torch.distributed.destroy_process_group()
