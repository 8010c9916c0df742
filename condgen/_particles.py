r"""The outer particle plate of condgen's vectorised traces, and per-particle sums.

A low-level module (it imports nothing of condgen). Pyro's vectorised ELBOs run a model under
one more plate, left of the model's own ones, at dimension :math:`-(\text{max\_plate\_nesting}
+ 1)`; the log-density of a site then holds one entry (or one block of entries) per particle.
"""

from __future__ import annotations

__all__ = ["PARTICLES", "particle_plate", "sum_per_particle", "vectorized"]

from collections.abc import Callable, Iterable
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from torch import Tensor

PARTICLES = "_condgen_particles"
r"""The name of the particle plate."""


def particle_plate(
    num_particles: int, max_plate_nesting: int, name: str = PARTICLES
) -> pyro.plate:
    r"""The plate of ``num_particles`` particles left of a model's ``max_plate_nesting``
    plates."""
    return pyro.plate(name, num_particles, dim=-int(max_plate_nesting) - 1)


def vectorized(
    fn: Callable, num_particles: int, max_plate_nesting: int, name: str = PARTICLES
) -> Callable:
    r"""``fn`` (a model or a guide) run under :func:`particle_plate`."""

    def run(*args: Any, **kwargs: Any) -> Any:
        with particle_plate(num_particles, max_plate_nesting, name):
            return fn(*args, **kwargs)

    return run


def sum_per_particle(
    trace: poutine.Trace,
    names: Iterable[str],
    num_particles: int,
    max_plate_nesting: int,
    *,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    r"""The log-densities of the sites ``names`` of a vectorised trace, summed over every
    dimension but the particle one: ``[num_particles]``. A log-density without the particle
    dimension (the same for every particle) is added to each; without sites, the sum is zeros
    on ``device`` in ``dtype``.

    Example:
        >>> import pyro, pyro.distributions as dist, pyro.poutine as poutine
        >>> def model():
        ...     with pyro.plate("data", 3):
        ...         pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> trace = poutine.trace(vectorized(model, 5, 1)).get_trace()
        >>> trace.compute_log_prob()
        >>> sum_per_particle(trace, ["x"], 5, 1).shape
        torch.Size([5])
    """
    particle_dim = int(max_plate_nesting) + 1
    total = None
    for name in names:
        log_prob = trace.nodes[name]["log_prob"]
        if log_prob.dim() < particle_dim:  # constant across particles
            term = log_prob.sum().expand(num_particles)
        else:
            start = log_prob.dim() - particle_dim + 1
            term = log_prob.reshape(*log_prob.shape[:start], -1).sum(-1).reshape(-1)
            term = term.expand(num_particles)
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(num_particles, device=device, dtype=dtype)
    return total
