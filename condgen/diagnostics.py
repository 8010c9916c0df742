r"""Convergence checks of a posterior's chains: R-hat, effective sample size and the agreement
of independent runs' evidence estimates, reported in ``stats`` and as warnings."""

from __future__ import annotations

__all__ = ["ConvergenceWarning", "check_convergence", "convergence", "emit"]

import math
import os
import sys
import warnings

import arviz as az
import numpy as np

from .posterior import Posterior


class ConvergenceWarning(UserWarning):
    r"""A posterior whose chains or runs disagree, or whose effective sample size is too low,
    to be trusted as it is."""


def convergence(posterior: Posterior) -> dict[str, float]:
    r"""The worst rank-normalised split R-hat and the lowest bulk effective sample size over
    every coordinate of every latent site (Vehtari et al., 2021), computed by ArviZ on the
    draws that :meth:`~condgen.Posterior.to_arviz` exports (each chain of a weighted
    posterior resampled by its own weights).

    Returns:
        ``{"rhat": ..., "ess_bulk": ...}``; R-hat is NaN with one chain.

    Example:
        >>> import torch
        >>> from condgen import Posterior, Problem
        >>> import pyro, pyro.distributions as dist
        >>> problem = Problem(lambda: pyro.sample("x", dist.Normal(0.0, 1.0)))
        >>> stuck = torch.stack([torch.randn(500) - 3, torch.randn(500) + 3])  # two modes
        >>> round(convergence(Posterior(problem, {"x": stuck}))["rhat"], 1) > 1.5
        True

    References:
        | Rank-normalization, folding, and localization: An improved R-hat for assessing
        | convergence of MCMC (Vehtari et al., 2021) https://arxiv.org/abs/1903.08008
    """
    source = posterior.resample(per_chain=True)
    rhat, ess = -math.inf, math.inf
    for value in source.samples.values():
        draws = value.reshape(*value.shape[:2], -1).double().cpu().numpy()  # [chains, draws, k]
        for k in range(draws.shape[-1]):
            column = draws[..., k]
            if np.ptp(column) == 0:  # a constant coordinate: nothing to compare
                continue
            if posterior.num_chains > 1:
                rhat = max(rhat, float(az.rhat(column)))
            ess = min(ess, float(az.ess(column, method="bulk")))
    if posterior.num_chains == 1 or rhat == -math.inf:
        rhat = math.nan
    return {"rhat": rhat, "ess_bulk": ess}


def check_convergence(
    posterior: Posterior,
    *,
    max_rhat: float,
    min_ess: float = 100.0,
    max_log_evidence_sd: float = 1.0,
    suggestion: str,
    warn: bool = True,
) -> list[str]:
    r"""Checks that a posterior's chains (or independent runs) agree, records the figures in
    ``posterior.stats`` (``rhat``, ``ess_bulk``) and warns with a :class:`ConvergenceWarning`
    for each failed check, listed in ``posterior.stats["warnings"]``.

    The checks:

    * R-hat above ``max_rhat``: the chains disagree about some coordinate (a chain stuck in a
      mode, runs whose particles found different modes);
    * bulk ESS below ``min_ess``: too few effective draws for the mean and the quantiles;
    * the standard deviation of the runs' log evidence estimates ``stats["log_evidence_runs"]``
      above ``max_log_evidence_sd``: their :math:`\hat Z_r` differ by more than a factor
      :math:`e`, so one run dominates the pooled draws.

    Arguments:
        posterior: The posterior to check (draws of several chains for R-hat).
        max_rhat: The largest acceptable R-hat.
        min_ess: The smallest acceptable bulk ESS.
        max_log_evidence_sd: The largest acceptable spread of the runs' log evidence.
        suggestion: What to do about a failure (e.g. ``"use more particles"``).
        warn: Whether to warn now (else :func:`emit` warns later, e.g. after the last of
            several attempts).

    Returns:
        The warnings' messages.
    """
    figures = convergence(posterior)
    posterior.stats.update(figures)
    method = posterior.method
    messages = []
    if figures["rhat"] > max_rhat:
        messages.append(
            f"method '{method}': R-hat is {figures['rhat']:.3f} > {max_rhat} across its "
            f"{posterior.num_chains} chains (or runs), which disagree; {suggestion}"
        )
    if figures["ess_bulk"] < min_ess:
        messages.append(
            f"method '{method}': the bulk effective sample size is {figures['ess_bulk']:.0f} < "
            f"{min_ess:.0f}; {suggestion}"
        )
    runs = [v for v in posterior.stats.get("log_evidence_runs", []) if math.isfinite(v)]
    if len(runs) > 1 and float(np.std(runs, ddof=1)) > max_log_evidence_sd:
        messages.append(
            f"method '{method}': the log evidence of its {len(runs)} runs has standard "
            f"deviation {float(np.std(runs, ddof=1)):.2f} > {max_log_evidence_sd} (the runs "
            f"disagree, and the one with the largest evidence dominates); {suggestion}"
        )
    posterior.stats["warnings"] = [*posterior.stats.get("warnings", []), *messages]
    if warn:
        emit(posterior)
    return messages


def emit(posterior: Posterior) -> None:
    r"""Warns with a :class:`ConvergenceWarning` for each message in
    ``posterior.stats["warnings"]``."""
    for message in posterior.stats.get("warnings", []):
        warnings.warn(message, ConvergenceWarning, stacklevel=_outside_condgen())


def _outside_condgen() -> int:
    r"""The ``stacklevel`` of the first caller outside condgen (the user's line)."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return level
