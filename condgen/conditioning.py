r"""One call to condition a Pyro model on data: ``condgen.condition``."""

from __future__ import annotations

__all__ = ["condition", "seeded"]

import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from . import methods
from ._checks import as_count, as_data
from ._random import seeded
from .methods.base import Method
from .posterior import Posterior
from .problem import Problem


def condition(
    model: Callable | Problem,
    data: Mapping[str, Any] | None = None,
    *,
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    method: str | Method = "nuts",
    num_samples: int = 1000,
    seed: int | None = None,
    progress: bool = True,
    **options: Any,
) -> Posterior:
    r"""Conditions a Pyro model on observations and returns posterior draws.

    The model is traced once into a :class:`~condgen.Problem` (its latent and observed sites
    and a vectorised likelihood), then ``method`` turns the problem into a
    :class:`~condgen.Posterior`.

    Arguments:
        model: A Pyro model, or a :class:`~condgen.Problem` built from one.
        data: Observations by site name, applied with :func:`pyro.condition`.
        args: Positional arguments of the model.
        kwargs: Keyword arguments of the model.
        method: A method name (see :func:`condgen.methods.available`) or a method object.
        num_samples: The number of draws, all chains together (particles for weighted
            methods).
        seed: If given, the run is reproducible: the same seed gives the same draws, and the
            caller's random state is left untouched.
        progress: Whether to show progress bars.
        options: Options of the named method, e.g. ``num_chains=4`` for ``"nuts"``.

    Returns:
        The posterior draws, with ``stats["time_s"]`` and method-specific statistics.

    Raises:
        ValueError: For bad observations, an unknown method or option, or a method that
            cannot handle the model (the message names the site and a method that fits).
        FloatingPointError: If a method produced NaN or infinite draws.

    Example:
        >>> import condgen, pyro, torch
        >>> import pyro.distributions as dist
        >>> def model():
        ...     x = pyro.sample("x", dist.Normal(0.0, 1.0))
        ...     pyro.sample("y", dist.Normal(x, 0.5))
        >>> post = condgen.condition(model, {"y": torch.tensor(1.0)}, method="nuts",
        ...                          num_samples=400, num_chains=2, warmup_steps=100,
        ...                          seed=0, progress=False)
        >>> post.samples["x"].shape  # [chains, draws]
        torch.Size([2, 200])
        >>> abs(post.samples["x"].mean().item() - 0.8) < 0.1  # the exact posterior mean: 0.8
        True
    """
    data = as_data(data)
    method = methods.get(method, **options)
    num_samples = as_count("num_samples", num_samples)
    if isinstance(model, Problem) and (data or args or kwargs):
        raise ValueError("data, args and kwargs are already part of the given Problem")
    devices = [v.device for v in data.values() if isinstance(v, torch.Tensor)]
    with seeded(seed, model.device if isinstance(model, Problem) else (devices or ["cpu"])[0]):
        # tracing the model draws from its prior: it belongs inside the seeded block
        problem = model if isinstance(model, Problem) else Problem(model, data, args, kwargs)
        start = time.perf_counter()
        posterior = method.run(problem, num_samples=num_samples, progress=progress)
        posterior.stats["time_s"] = time.perf_counter() - start
    for name, value in posterior.samples.items():
        if not torch.isfinite(value).all():
            raise FloatingPointError(
                f"method '{method.name}' produced NaN or infinite draws at site '{name}'"
            )
    posterior.stats.setdefault("seed", seed)
    return posterior
