r"""The checks that a model fits condgen: tracing failures explained, data keys, and
vectorisation over particles."""

from __future__ import annotations

__all__ = ["check_data_keys", "check_vectorizable", "tracing_failure"]

import math
from collections.abc import Mapping
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from torch import Tensor


def tracing_failure(problem: Any, partial: poutine.Trace, error: Exception) -> str:
    r"""Why tracing failed: the error, the last sample site reached, and the sites,
    observations and arguments whose dtypes or devices disagree."""
    sites = [s for s in partial.nodes.values() if s["type"] == "sample"]
    where = f"after sample site '{sites[-1]['name']}'" if sites else "before any sample site"
    message = f"running the model with the given data failed {where}: "
    message += f"{type(error).__name__}: {error}"
    tensors = {f"site '{s['name']}'": s["value"] for s in sites}
    tensors |= {f"observation '{k}'": v for k, v in problem.data.items() if k not in partial}
    arguments = {**dict(enumerate(problem.args)), **problem.kwargs}
    tensors |= {f"argument {k!r}": v for k, v in arguments.items() if isinstance(v, Tensor)}
    floating = {k: v for k, v in tensors.items() if v.is_floating_point()}
    for kind, key in (("dtype", lambda v: v.dtype), ("device", lambda v: v.device)):
        groups: dict[Any, list[str]] = {}
        for name, value in floating.items():
            groups.setdefault(str(key(value)), []).append(name)
        if len(groups) > 1:
            listing = "; ".join(f"{k}: {', '.join(v)}" for k, v in groups.items())
            message += (
                f". The model's tensors disagree in {kind} ({listing}): give them one "
                f"{kind}, e.g. with prior.to(...) for a condgen prior and .to(...) for "
                "the observations and the model's own tensors"
            )
    return message


def check_data_keys(data: Mapping[str, Tensor], sites: list[dict]) -> None:
    r"""Raises if ``data`` names a site that the model does not have."""
    names = {s["name"] for s in sites}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"data has keys {unknown} that are not sample sites of the model; "
            f"its sample sites are {sorted(names)}"
        )


def check_vectorizable(problem: Any) -> None:
    r"""Raises unless the model runs under an outer particle plate with the shapes and
    log-densities of one particle at a time."""
    probe = 2
    try:
        with torch.no_grad():
            trace = problem.particle_trace(probe, log_prob_sites=problem._cheap_sites())
    except Exception as error:
        raise ValueError(
            "the model cannot be vectorised over particles (an outer pyro.plate at dim "
            f"{-problem.max_plate_nesting - 1}): {error}. Declare batch dimensions with "
            "pyro.plate, event dimensions with .to_event(n), and avoid Python control "
            "flow on sampled values."
        ) from error
    for name, site in problem.latent_sites.items():
        value = trace.nodes[name]["value"]
        if value.numel() != probe * math.prod(site.shape):
            raise ValueError(
                f"site '{name}' has shape {tuple(value.shape)} under a particle plate of "
                f"size {probe}, expected {probe} x {tuple(site.shape)}: the model cannot be "
                "vectorised. Declare batch dimensions with pyro.plate and event dimensions "
                "with .to_event(n)."
            )
    for name in problem._cheap_sites():
        log_prob, shape = trace.nodes[name]["log_prob"], problem._log_prob_shapes[name]
        if log_prob.numel() != probe * math.prod(shape):
            raise ValueError(
                f"the log-density of site '{name}' has shape {tuple(log_prob.shape)} under a "
                f"particle plate of size {probe}, expected {probe} x {tuple(shape)}: the "
                "model broadcasts a latent value against the wrong dimension. Index from "
                "the right (e.g. (X * w).sum(-1) instead of X @ w or w.unsqueeze(-2)), so "
                "that extra leading dimensions pass through."
            )
    _check_particles_independent(problem, trace, probe)


def _check_particles_independent(problem: Any, trace: poutine.Trace, probe: int) -> None:
    # A model can have every shape right and still mix particles (e.g. x.sum() over a
    # latent without event dimensions): compare with one particle at a time.
    names = problem._cheap_sites()
    vectorized = problem._sum_log_prob(trace, names, probe)
    values = problem._latent_values(trace, probe)
    for i in range(probe):
        single = {k: v[i] for k, v in values.items()}
        with torch.no_grad(), pyro.validation_enabled(False):
            one = poutine.trace(poutine.condition(problem.conditioned_model, single)).get_trace(
                *problem.args, **problem.kwargs
            )
            one.compute_log_prob(site_filter=lambda name, site: name in names)
            expected = sum(one.nodes[n]["log_prob"].sum() for n in names)
        if not torch.allclose(  # a NaN density at a probe is the same NaN both ways
            vectorized[i],
            torch.as_tensor(expected).to(vectorized),
            rtol=1e-3,
            atol=1e-3,
            equal_nan=True,
        ):
            raise ValueError(
                "the model gives different log-densities when run for several particles at "
                "once than for one at a time: it reduces or broadcasts over a dimension "
                "that is not its own. Declare event dimensions with .to_event(n) and batch "
                "dimensions with pyro.plate, and reduce over the right-most dimensions only."
            )
