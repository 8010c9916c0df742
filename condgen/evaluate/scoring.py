r"""Measures of posterior draws against reference draws of the same sites."""

from __future__ import annotations

__all__ = [
    "DEFAULT_METRICS",
    "METRICS",
    "check_metrics",
    "posterior_metrics",
    "site_moment_errors",
]

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor

from ..diagnostics import convergence
from ..posterior import Posterior
from .metrics import c2st, energy_distance, mmd, moment_errors, sliced_wasserstein

METRICS = ("mean_err", "sd_ratio", "sw", "energy", "mmd", "c2st", "ess", "rhat")
r"""The metrics :func:`posterior_metrics` can compute (see there)."""

DEFAULT_METRICS = ("mean_err", "sd_ratio", "sw", "ess", "rhat")
r"""The metrics of :func:`posterior_metrics` and :func:`~condgen.evaluate.compare` by default."""


def check_metrics(metrics: Iterable[str]) -> list[str]:
    r"""The metrics as a list, checked against :data:`METRICS`.

    Raises:
        ValueError: If one is unknown.
    """
    metrics = list(metrics)
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; available: {list(METRICS)}")
    return metrics


def _stack(values: Mapping[str, Tensor], names: Sequence[str]) -> Tensor:
    return torch.cat([values[k].reshape(len(values[k]), -1).double() for k in names], dim=-1)


def _weights(posterior: Posterior) -> Tensor | None:
    if posterior.log_weights is None:
        return None
    return (posterior.log_weights.exp() / posterior.num_chains).flatten()


def site_moment_errors(
    posterior: Posterior, reference: Mapping[str, Tensor], names: Sequence[str]
) -> tuple[Tensor, Tensor]:
    r"""The standardised mean errors and standard deviation ratios of every coordinate of the
    sites ``names`` (see :func:`~condgen.evaluate.moment_errors`), the posterior's draws
    weighted by its weights, both shaped ``[num_coordinates]``."""
    draws, ref = _stack(posterior.flatten(), names), _stack(reference, names)
    return moment_errors(draws.cpu(), ref.cpu(), _weights(posterior))


def posterior_metrics(
    posterior: Posterior,
    reference: Mapping[str, Tensor],
    metrics: Iterable[str] = DEFAULT_METRICS,
) -> dict[str, float]:
    r"""Measures posterior draws against reference draws of the same sites.

    Metrics, over all latent coordinates :math:`j` with reference mean :math:`m_j` and
    standard deviation :math:`s_j` (see :func:`~condgen.evaluate.moment_errors`):

    * ``mean_err``: :math:`\max_j |\hat m_j - m_j| / s_j`, the worst standardised mean error;
    * ``sd_ratio``: the mean over :math:`j` of :math:`\hat s_j / s_j` (1 is right, below 1
      under-dispersed);
    * ``sw``: the sliced 2-Wasserstein distance (:func:`~condgen.evaluate.sliced_wasserstein`);
    * ``energy``: the energy distance (:func:`~condgen.evaluate.energy_distance`);
    * ``mmd``: the squared MMD, Gaussian kernel with the median-heuristic bandwidth
      (:func:`~condgen.evaluate.mmd`);
    * ``c2st``: the classifier two-sample accuracy (:func:`~condgen.evaluate.c2st`), 0.5 is
      indistinguishable, on equally many draws of each;
    * ``ess``: the bulk effective sample size from ArviZ (minimum over coordinates), or the
      importance ESS of the weights for weighted posteriors;
    * ``rhat``: the largest rank-normalised R-hat (NaN with a single chain), of each chain
      resampled by its own weights for weighted posteriors
      (:func:`~condgen.diagnostics.convergence`).

    Weighted posteriors are measured through their weighted moments and resampled draws.
    Sample distances use at most 4000 draws of each side.

    Arguments:
        posterior: The draws to measure.
        reference: Reference draws by site, ``[M, *site.shape]``.
        metrics: The metrics to compute, from :data:`METRICS`.

    Returns:
        The metrics by name.
    """
    metrics = check_metrics(metrics)
    names = list(posterior.problem.latent_sites)
    missing = sorted(set(names) - set(reference))
    if missing:
        raise ValueError(f"the reference has no draws for the sites {missing}")
    ref = _stack(reference, names).cpu()
    mean_err, sd_ratio = site_moment_errors(posterior, reference, names)
    draws = _stack(posterior.resample().flatten(), names).cpu()
    n = min(len(draws), len(ref), 4000)
    draws_n, ref_n = draws[:n], ref[torch.randperm(len(ref), generator=_generator())[:n]]
    values = {
        "mean_err": lambda: float(mean_err.abs().max()),
        "sd_ratio": lambda: float(sd_ratio.mean()),
        "sw": lambda: float(sliced_wasserstein(draws, ref)),
        "energy": lambda: float(energy_distance(draws_n, ref_n)),
        "mmd": lambda: float(mmd(draws_n, ref_n)),
        "c2st": lambda: float(c2st(ref_n, draws_n)),
        "ess": lambda: _ess(posterior),
        "rhat": lambda: _rhat(posterior),
    }
    return {name: values[name]() for name in metrics}


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _ess(posterior: Posterior) -> float:
    if posterior.log_weights is not None:
        return float(posterior.stats.get("ess", math.nan))
    return convergence(posterior)["ess_bulk"]


def _rhat(posterior: Posterior) -> float:
    return convergence(posterior)["rhat"]
