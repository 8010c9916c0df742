r"""The jobs that :func:`~condgen.evaluate.compare` and :func:`~condgen.evaluate.calibration`
fan out with :func:`~condgen.evaluate.map_jobs`: one conditioning run each, a pure function of
its picklable arguments, so that any executor gives the same results as a local run."""

from __future__ import annotations

__all__ = ["Run", "compare_run", "simulate_ranks", "simulation_seeds"]

import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyro.poutine as poutine
import torch
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor

from ..conditioning import condition, seeded
from ..diagnostics import ConvergenceWarning
from ..methods.base import Method
from ..posterior import Posterior
from .scoring import posterior_metrics


@dataclass(frozen=True)
class Run:
    r"""One run of a method on a model given data, as a job carries it to a worker."""

    model: Callable
    data: Mapping[str, Any] | None
    args: tuple
    kwargs: Mapping[str, Any] | None
    method: Method
    num_samples: int
    seed: int

    def condition(self) -> Posterior:
        r"""Conditions the model, without a progress bar (a job's would be one of many)."""
        return condition(
            self.model,
            self.data,
            args=self.args,
            kwargs=self.kwargs,
            method=self.method,
            num_samples=self.num_samples,
            seed=self.seed,
            progress=False,
        )


def compare_run(
    run: Run, reference: Mapping[str, Tensor] | None, metrics: Sequence[str]
) -> dict[str, Any]:
    r"""One run of one method for :func:`~condgen.evaluate.compare`: its statistics, metrics
    and draws, or the error it raised (a failing method is a row, not a crash)."""
    try:
        with warnings.catch_warnings():  # the table counts them (column ``warnings``)
            warnings.simplefilter("ignore", ConvergenceWarning)
            posterior = run.condition()
        row = {
            "time_s": float(posterior.stats["time_s"]),
            "nfe": float(posterior.stats.get("nfe", np.nan)),
            "warnings": len(posterior.stats.get("warnings", [])),
        }
        if reference is not None:
            with seeded(run.seed):  # resampling weighted draws is random too
                row.update(posterior_metrics(posterior, reference, metrics))
    except Exception as error:
        return {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    return {
        "row": row,
        "samples": posterior.samples,
        "log_weights": posterior.log_weights,
        "chain_log_weights": posterior.chain_log_weights,
        "stats": posterior.stats,
        "sample_stats": posterior.sample_stats,
        "method": posterior.method,
    }


def simulation_seeds(seed: int, num_simulations: int) -> np.ndarray:
    r"""The three seeds of each simulation :math:`i`, from ``numpy.random.SeedSequence([seed,
    i])``: shaped ``[num_simulations, 3]``."""
    return np.stack(
        [
            np.random.SeedSequence([seed, i]).generate_state(3, dtype=np.uint32)
            for i in range(num_simulations)
        ]
    ).astype(np.int64)


def _sample_joint(
    model: Callable, args: tuple, kwargs: Mapping[str, Any], seed: int
) -> poutine.Trace:
    r"""A joint draw of every site of the model, observed ones included (the model run under
    :func:`pyro.poutine.uncondition`), seeded with ``seed``."""
    with seeded(seed), torch.no_grad():
        trace = poutine.trace(poutine.uncondition(model)).get_trace(*args, **kwargs)
    return prune_subsample_sites(trace)


def simulate_ranks(
    model: Callable,
    method: Method,
    args: tuple,
    kwargs: dict[str, Any],
    observed: tuple[str, ...],
    sites: tuple[str, ...],
    num_samples: int,
    seeds: tuple[int, int, int],
) -> tuple[dict[str, np.ndarray], int, list[str]]:
    r"""One simulation of :func:`~condgen.evaluate.calibration`: draw :math:`(x, y)` from the
    model, condition on :math:`y`, rank :math:`x` among the draws.

    Returns:
        The ranks by site, the number of draws, and the method's warnings (a worker's would
        be lost; the caller summarises them once).
    """
    simulation_seed, inference_seed, tie_seed = (int(s) for s in seeds)
    trace = _sample_joint(model, args, kwargs, simulation_seed)
    data = {name: trace.nodes[name]["value"] for name in observed}
    run = Run(model, data, args, kwargs, method, num_samples, inference_seed)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            posterior = run.condition()
    except Exception as error:
        message = f"method '{method.name}' failed on the simulation with seeds {list(seeds)}"
        # keep the documented error types of condgen.condition, with the seeds added
        kind = type(error) if type(error) in (ValueError, FloatingPointError) else RuntimeError
        raise kind(f"{message}: {error}") from error
    generator = np.random.default_rng(tie_seed)
    with seeded(tie_seed):
        draws = posterior.resample().flatten()
    ranks = {}
    for name in sites:
        truth = trace.nodes[name]["value"].detach()
        sample = draws[name].to(truth.device, truth.dtype)
        below = (sample < truth).sum(0).cpu().numpy()
        ties = (sample == truth).sum(0).cpu().numpy()
        ranks[name] = below + generator.integers(0, ties + 1)
    messages = list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))
    return ranks, len(next(iter(draws.values()))), messages
