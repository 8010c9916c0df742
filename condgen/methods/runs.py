r"""Independent particle systems as the chains of one posterior: pooled by their evidence,
with the log evidence and its standard error, and checked for agreement."""

from __future__ import annotations

__all__ = ["DEFAULT_MAX_RHAT", "ParticleRun", "pool_runs", "split_particles", "until_agreement"]

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..diagnostics import check_convergence, emit
from ..posterior import Posterior
from ..problem import Problem

#: The R-hat above which chains or independent runs are said to disagree when no target is
#: set: at a thousand particles split among four runs, R-hat of runs that agree reached 1.035 on
#: the mixture problems (medians 1.01-1.02), and NUTS chains of a few hundred draws 1.02.
DEFAULT_MAX_RHAT = 1.05

_COSTS = ("nfe", "vjp")  # per-particle costs, summed over the attempts of until_agreement


@dataclass
class ParticleRun:
    r"""One particle system's result.

    Attributes:
        values: The particles by latent site, each shaped ``[num_particles, *site.shape]``.
        log_weights: Their normalised log-weights, shaped ``[num_particles]``.
        log_evidence: The run's estimate :math:`\log \hat Z` of :math:`\log p(y)`.
        stats: The run's own statistics (ESS, ancestors, temperatures, ...).
    """

    values: dict[str, Tensor]
    log_weights: Tensor
    log_evidence: float
    stats: dict[str, Any] = field(default_factory=dict)


def split_particles(num_samples: int, num_runs: int) -> int:
    r"""The particles of each of ``num_runs`` runs that make at least ``num_samples``, as NUTS
    splits draws among chains."""
    if num_runs < 1:
        raise ValueError(f"num_runs must be at least 1, got {num_runs}")
    per_run = math.ceil(num_samples / num_runs)
    if per_run < 2:
        raise ValueError(
            f"{num_samples} particles split among {num_runs} runs leave {per_run} per run; give "
            f"num_samples >= {2 * num_runs} or fewer num_runs"
        )
    return per_run


def log_evidence(runs: Sequence[ParticleRun]) -> tuple[float, float]:
    r"""The pooled estimate :math:`\log \bar Z`, :math:`\bar Z = \frac1R \sum_r \hat Z_r`
    (unbiased for :math:`p(y)` as each :math:`\hat Z_r` is), and its standard error by the delta
    method, :math:`\mathrm{sd}(\hat Z_r) / (\sqrt R\, \bar Z)` (NaN with one run)."""
    log_z = torch.tensor([r.log_evidence for r in runs], dtype=torch.float64)
    pooled = float(log_z.logsumexp(0) - math.log(len(runs)))
    if len(runs) < 2:
        return pooled, math.nan
    ratios = (log_z - pooled).exp()  # Z_r / Z_bar, mean 1
    return pooled, float(ratios.std() / math.sqrt(len(runs)))


def pool_runs(
    problem: Problem,
    runs: Sequence[ParticleRun],
    stats: dict[str, Any],
    method: str,
    *,
    max_rhat: float,
    suggestion: str,
) -> Posterior:
    r"""The Posterior of independent particle systems: one chain per run, each weighted by its
    evidence estimate, with ``stats`` and the pooled ``log_evidence`` and
    ``log_evidence_se``, ``log_evidence_runs``; then the runs' agreement is checked
    (:func:`~condgen.diagnostics.check_convergence`), which adds ``rhat``, ``ess_bulk`` and the
    ``warnings`` that :func:`until_agreement` emits.

    Per-run statistics that are numbers become lists over the runs; ``ess`` is summed.
    """
    samples = {k: torch.stack([r.values[k] for r in runs]) for k in runs[0].values}
    log_weights = torch.stack([r.log_weights for r in runs])
    log_z = torch.tensor(
        [r.log_evidence for r in runs], dtype=log_weights.dtype, device=log_weights.device
    )
    pooled, se = log_evidence(runs)
    per_run = {k: [r.stats[k] for r in runs] for k in runs[0].stats}
    stats = {
        **stats,
        **per_run,
        "ess": float(sum(per_run.get("ess", [math.nan]))),
        "num_runs": len(runs),
        "log_evidence": pooled,
        "log_evidence_se": se,
        "log_evidence_runs": log_z.tolist(),
    }
    chain_log_weights = log_z if bool(torch.isfinite(log_z).all()) else None
    posterior = Posterior(
        problem,
        samples,
        log_weights=log_weights,
        chain_log_weights=chain_log_weights,
        stats=stats,
        method=method,
    )
    check_convergence(posterior, max_rhat=max_rhat, suggestion=suggestion, warn=False)
    return posterior


def until_agreement(
    run: Callable[[int], Posterior],
    num_samples: int,
    rhat: float | None,
    max_particles: int | None,
) -> Posterior:
    r"""Runs ``run(num_particles)`` (a posterior of independent runs, checked but not yet
    warned about) with ``num_samples`` particles; with a target ``rhat``, doubles the particles
    until no check fails or ``max_particles`` (default ``8 * num_samples``) is reached. Then
    warns about what the last attempt's checks found.

    Stats added: ``attempts`` (the particles of each attempt), ``particles`` (of the last),
    and ``nfe`` (and ``vjp``) become the network (or model) evaluations of all attempts per
    requested particle, :math:`\sum_a n_a \mathrm{nfe}_a / n`.
    """
    limit = 8 * num_samples if max_particles is None else max_particles
    if rhat is not None and limit < num_samples:
        raise ValueError(f"max_particles ({limit}) is below num_samples ({num_samples})")
    attempts, cost, n = [], dict.fromkeys(_COSTS, 0.0), num_samples
    while True:
        posterior = run(n)
        attempts.append(n)
        for key in cost:
            cost[key] += n * posterior.stats.get(key, 0)
        if rhat is None or not posterior.stats["warnings"] or 2 * n > limit:
            break
        n *= 2
    posterior.stats.update(attempts=attempts, particles=n)
    posterior.stats.update({k: v / num_samples for k, v in cost.items() if k in posterior.stats})
    emit(posterior)
    return posterior
