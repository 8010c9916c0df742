r"""The one count of network evaluations: per point, forward passes and vector-Jacobian
products apart."""

from __future__ import annotations

__all__ = ["EvaluationCounter", "count_evaluation"]

import math
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from torch import Tensor

_ACTIVE: ContextVar[tuple[EvaluationCounter, ...]] = ContextVar("counters", default=())


class EvaluationCounter:
    r"""Counts evaluations of a network, one per point of each batch it evaluates, and the
    vector-Jacobian products (backward passes) through them, one per point of the batch the
    gradient flows through.

    While a counter is active (``with counter:``), every denoiser evaluation of a path prior
    (:meth:`~condgen.priors.PathPrior.denoise`, which calls :func:`count_evaluation`) is
    counted, whichever code makes it: a sampler, a guidance method, an SMC kernel, a copy of
    the prior made by :meth:`~condgen.priors.DiffusionPrior.given`. Counters nest: each active
    one counts. A function of one point, such as a potential energy, is counted by
    :meth:`wrap` instead.

    Attributes:
        evaluations: The points evaluated so far.
        vjps: The vector-Jacobian products taken through those evaluations so far, per point.

    Example:
        >>> import torch
        >>> from condgen.priors import GaussianMixturePrior
        >>> from condgen.priors.counting import EvaluationCounter
        >>> prior = GaussianMixturePrior(torch.ones(1), torch.zeros(1, 2), torch.eye(2)[None])
        >>> with EvaluationCounter() as counter:
        ...     x = prior.sample((100,), sampler="heun", steps=8)
        >>> counter.evaluations, counter.per_particle(100)  # 2 a Heun step, 1 last
        (1700, {'nfe': 17, 'vjp': 0})
    """

    def __init__(self):
        self.evaluations, self.vjps = 0, 0
        self._tokens: list = []

    def __enter__(self) -> EvaluationCounter:
        self._tokens.append(_ACTIVE.set((*_ACTIVE.get(), self)))
        return self

    def __exit__(self, *exc_info: Any) -> None:
        _ACTIVE.reset(self._tokens.pop())

    def record(self, points: int, output: Tensor | None = None) -> None:
        r"""Counts an evaluation of ``points`` points that returned ``output``; each backward
        pass through ``output`` (when it requires a gradient) then counts ``points`` VJPs."""
        self.evaluations += points
        if output is not None and output.requires_grad:
            output.register_hook(lambda grad: self._backward(points))

    def _backward(self, points: int) -> None:
        self.vjps += points

    def wrap(self, function: Callable[..., Tensor]) -> Callable[..., Tensor]:
        r"""``function`` of one point, counted: each call is one evaluation (and each
        backward pass through its output one VJP)."""

        def counted(*args: Any, **kwargs: Any) -> Tensor:
            output = function(*args, **kwargs)
            self.record(1, output)
            return output

        return counted

    def per_particle(self, num_particles: int) -> dict[str, int | float]:
        r"""The evaluations and VJPs per particle, ``{"nfe": ..., "vjp": ...}``, as the stats
        of a run of ``num_particles`` particles report them (integers when they divide)."""
        return {
            "nfe": _ratio(self.evaluations, num_particles),
            "vjp": _ratio(self.vjps, num_particles),
        }

    def __repr__(self) -> str:
        return f"EvaluationCounter(evaluations={self.evaluations}, vjps={self.vjps})"


def _ratio(count: int, num_particles: int) -> int | float:
    return count // num_particles if count % num_particles == 0 else count / num_particles


def count_evaluation(output: Tensor, event_dim: int) -> Tensor:
    r"""Counts, in every active :class:`EvaluationCounter`, one network evaluation per point of
    ``output`` (its shape ``[*batch, *event]`` less the last ``event_dim`` dimensions); returns
    ``output``. Path priors call it in :meth:`~condgen.priors.PathPrior.denoise`."""
    counters = _ACTIVE.get()
    if counters:
        points = math.prod(output.shape[: output.dim() - event_dim])
        for counter in counters:
            counter.record(points, output)
    return output
