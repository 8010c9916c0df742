r"""Sequential rounds for one observation: truncated sequential posterior estimation (TSNPE)."""

from __future__ import annotations

__all__ = ["TruncatedPrior", "fit_sequential", "round_sizes"]

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import pyro.poutine as poutine
import torch
from torch import Tensor, nn

from .._random import MAX_SEED, check_seed, seeded
from ..problem import Problem
from .training import split

_BATCH = 10_000
_WIDENING = 2.0
r"""The factor :math:`\lambda` of the proposal's scale: :math:`\mathcal{N}(m, \lambda^2 C)`."""


def round_sizes(num_simulations: int, rounds: int) -> list[int]:
    r"""The simulations of each round: :math:`N` split into :math:`R` shares that differ by at
    most one, the larger first, summing to :math:`N` exactly.

    Raises:
        ValueError: If a round would get fewer than 2 simulations.

    Example:
        >>> round_sizes(10, 3)
        [4, 3, 3]
    """
    if isinstance(num_simulations, bool) or not isinstance(num_simulations, int):
        raise ValueError(f"num_simulations must be a positive integer, got {num_simulations!r}")
    if num_simulations < 2 * rounds:
        raise ValueError(
            f"num_simulations={num_simulations} is too few for rounds={rounds}: each round needs "
            "at least 2 simulations"
        )
    share, rest = divmod(num_simulations, rounds)
    return [share + (r < rest) for r in range(rounds)]


class TruncatedPrior:
    r"""The prior of a Pyro model truncated to the highest-probability region of a posterior
    estimate at one observation (Deistler et al., 2022):

    .. math:: \tilde p(\theta) \propto p(\theta) \, \mathbb{1}[\log q(\theta \mid x_o) \ge
        \tau_\epsilon],

    where :math:`\tau_\epsilon` is the :math:`\epsilon`-quantile of :math:`\log q(\theta \mid
    x_o)` under :math:`\theta \sim q(\cdot \mid x_o)`: the region holds the mass
    :math:`1 - \epsilon` of the estimate. :math:`\tau_\epsilon` is estimated from ``draws``
    draws of :math:`q` (the lower order statistic, so with fewer than :math:`1 / \epsilon`
    draws it is their minimum: a larger, more cautious region, of estimated mass
    :math:`1 - 1/\text{draws}` or more).

    :meth:`sample` draws :math:`\tilde p` in one of two ways.

    * **Rejection** from the prior: exact. A pilot batch of :math:`\max(n, 1000)` prior draws
      estimates the acceptance :math:`a`, the prior mass of the region; rejection goes on while
      it costs at most ``oversampling`` evaluations of :math:`\log q` per draw,
      :math:`a \ge 1 / K`.
    * **Sampling-importance-resampling** (SIR, Rubin 1988) when the region is smaller: the
      proposal is a Gaussian in the unconstrained space of the latents
      (:math:`z = T^{-1}(\theta)`, see :class:`~condgen.amortized.PosteriorEstimator`), fitted
      to the draws of :math:`q` and widened, :math:`r = \mathcal{N}(m, \lambda^2 C)` with
      :math:`\lambda = 2`; :math:`K n` candidates are weighted by :math:`w \propto p(\theta)
      \left|\det \partial T / \partial z\right| / r(z) \, \mathbb{1}[\theta \in \text{region}]`
      and :math:`n` are drawn with replacement in proportion to :math:`w`. It targets
      :math:`\tilde p` as :math:`K \to \infty`; with finite :math:`K` its draws lean towards
      the proposal where :math:`w` varies much, and repeat candidates when the effective
      sample size :math:`(\sum w)^2 / \sum w^2` is below :math:`n` (a warning says so). The
      Gaussian has full support, so no part of the region is left out.

    Each candidate costs one evaluation of :math:`\log q` (for a path estimator an ODE solve,
    with the looser tolerances of its ``truncation_defaults["log_prob"]``, which also define
    the region).

    Arguments:
        estimator: A trained :class:`~condgen.amortized.PosteriorEstimator`.
        x_o: The observation, as :meth:`~condgen.amortized.PosteriorEstimator.sample` takes
            it.
        truncation: The quantile :math:`\epsilon \in (0, 1)`.
        draws: The draws of :math:`q(\cdot \mid x_o)` behind :math:`\tau_\epsilon` (default:
            the estimator's ``truncation_defaults``).
        oversampling: The candidates :math:`K` per draw of SIR, and the bound on the prior
            draws per draw of rejection (default: the estimator's ``truncation_defaults``).

    Attributes:
        threshold: :math:`\tau_\epsilon`.
        stats: Diagnostics of the last :meth:`sample`: ``sampler`` (``"rejection"`` or
            ``"sir"``), ``acceptance`` (the fraction of candidates in the region),
            ``prior_mass`` (the prior mass of the region, estimated), ``ess`` (the effective
            sample size of SIR, the number of draws for rejection) and ``log_q_evaluations``.

    Raises:
        ValueError: For a bad ``truncation``, ``draws`` or ``oversampling``, or an untrained
            estimator.

    Example:
        >>> import condgen
        >>> from condgen.amortized import NPE, TruncatedPrior
        >>> task = condgen.evaluate.GaussianLinear(dim=2)
        >>> npe = NPE(task.model, observed=["x"], transforms=1, hidden_features=[16])
        >>> losses = npe.fit(300, max_epochs=2, progress=False, seed=0)
        >>> region = TruncatedPrior(npe, task.data, draws=1000)
        >>> theta = region.sample(100)
        >>> bool(region.contains(theta).all()), theta["theta"].shape
        (True, torch.Size([100, 2]))

    References:
        | Truncated proposals for scalable and hassle-free simulation-based inference
          (Deistler, Goncalves and Macke, 2022)
        | https://arxiv.org/abs/2210.04815

        | Using the SIR algorithm to simulate posterior distributions (Rubin, 1988)
    """

    def __init__(
        self,
        estimator: nn.Module,  # a PosteriorEstimator (estimator.py imports this module)
        x_o: Mapping[str, Any] | Tensor,
        truncation: float = 1e-4,
        draws: int | None = None,
        oversampling: int | None = None,
    ):
        defaults = estimator.truncation_defaults
        draws = defaults["draws"] if draws is None else draws
        oversampling = defaults["oversampling"] if oversampling is None else oversampling
        if not 0 < truncation < 1:
            raise ValueError(f"truncation must lie in (0, 1), got {truncation!r}")
        for name, value in (("truncation_draws", draws), ("oversampling", oversampling)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ValueError(f"{name} must be an integer of at least 2, got {value!r}")
        estimator._check_trained()
        self.estimator, self.truncation = estimator, float(truncation)
        self.oversampling = oversampling
        self.x_o = estimator._observation(x_o, "x_o")
        self.problem = Problem(
            poutine.uncondition(estimator.model),
            data=self.x_o,
            args=estimator.args,
            kwargs=estimator.kwargs,
        )
        self._context = estimator._embed(estimator._flat_observations(self.x_o))
        self.stats: dict[str, Any] = {}
        with torch.no_grad():
            q_draws = estimator.sample(self.x_o, draws)
            log_q = self.log_q(q_draws)
            self.threshold = float(torch.quantile(log_q, self.truncation, interpolation="lower"))
            z, _ = estimator._unconstrained.pack(q_draws, estimator.latent_loc)
        if not math.isfinite(self.threshold):
            warnings.warn(
                f"some of the {draws} draws of the {estimator.label} estimate have a log-density "
                f"of {self.threshold}: the truncation keeps the whole prior",
                RuntimeWarning,
                stacklevel=2,
            )
        features = z.shape[-1]
        z = z[torch.isfinite(z).all(-1)]
        covariance = torch.cov(z.T).reshape(features, features) if len(z) > 1 else None
        if covariance is None or not bool(torch.isfinite(covariance).all()):
            covariance = torch.eye(features, dtype=z.dtype, device=z.device)
        jitter = 1e-6 * covariance.diagonal().mean() * torch.eye(features).to(covariance)
        self.proposal = torch.distributions.MultivariateNormal(
            z.mean(0), scale_tril=_WIDENING * torch.linalg.cholesky(covariance + jitter)
        )

    def log_q(self, values: Mapping[str, Tensor]) -> Tensor:
        r""":math:`\log q(\theta \mid x_o)` of constrained values ``[N, *site.shape]`` by site,
        shaped ``[N]``, as the region is defined (see the class docstring)."""
        estimator = self.estimator
        size = len(next(iter(values.values())))
        options = estimator.truncation_defaults["log_prob"]
        parts = []
        with torch.no_grad():
            for start in range(0, size, _BATCH):
                batch = {n: v[start : start + _BATCH] for n, v in values.items()}
                parts.append(estimator._log_density(batch, self._context, **options))
        return torch.cat(parts).nan_to_num(nan=-math.inf)

    def contains(self, values: Mapping[str, Tensor]) -> Tensor:
        r"""Whether constrained values ``[N, *site.shape]`` by site lie in the region, ``[N]``."""
        return self.log_q(values) >= self.threshold

    def sample(self, num_samples: int, method: str = "auto") -> dict[str, Tensor]:
        r"""Draws from the truncated prior (see the class docstring).

        Arguments:
            num_samples: The number :math:`n` of draws.
            method: ``"rejection"``, ``"sir"``, or ``"auto"``: rejection while the pilot's
                acceptance is at least ``1 / oversampling``, else SIR.

        Returns:
            The latent sites (constrained), each shaped ``[num_samples, *site.shape]``.

        Raises:
            ValueError: For a bad ``method`` or ``num_samples``, or when no candidate lies in
                the region.
        """
        if method not in ("auto", "rejection", "sir"):
            raise ValueError(f"method must be 'auto', 'rejection' or 'sir', got {method!r}")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        if method == "sir":
            return self._importance_resampling(num_samples)
        pilot = self.problem.sample_prior(max(num_samples, 1000), _BATCH)
        inside = self.contains(pilot)
        accepted, tried = int(inside.sum()), len(inside)
        if method == "auto" and accepted * self.oversampling < tried:
            return self._importance_resampling(num_samples)
        kept = [{n: v[inside] for n, v in pilot.items()}]
        while accepted < num_samples:
            if accepted == 0 and tried >= 100 * num_samples * self.oversampling:
                raise ValueError(
                    f"none of {tried} prior draws lies in the truncation region: use method='sir'"
                )
            rate = max(accepted, 1) / tried
            size = min(math.ceil(1.2 * (num_samples - accepted) / rate), 100 * _BATCH)
            more = self.problem.sample_prior(size, _BATCH)
            inside = self.contains(more)
            kept.append({n: v[inside] for n, v in more.items()})
            accepted, tried = accepted + int(inside.sum()), tried + size
        self.stats = {
            "sampler": "rejection",
            "acceptance": accepted / tried,
            "prior_mass": accepted / tried,
            "ess": float(num_samples),
            "log_q_evaluations": tried,
        }
        return {n: torch.cat([k[n] for k in kept])[:num_samples] for n in pilot}

    def _importance_resampling(self, num_samples: int) -> dict[str, Tensor]:
        r"""SIR from the widened Gaussian proposal (see the class docstring)."""
        estimator = self.estimator
        size = self.oversampling * num_samples
        z = self.proposal.sample((size,))
        values = estimator._unconstrained.unpack(z)
        inside = self.contains(values)
        log_weights = torch.full((size,), -math.inf, dtype=z.dtype, device=z.device)
        if bool(inside.any()):
            chosen = {n: v[inside] for n, v in values.items()}
            _, log_det = estimator._unconstrained.pack(chosen, estimator.latent_loc)
            log_prior = torch.cat(
                [
                    self.problem.log_prior_and_likelihood(
                        {n: v[s : s + _BATCH] for n, v in chosen.items()}
                    )[0]
                    for s in range(0, int(inside.sum()), _BATCH)
                ]
            )
            log_weights[inside] = (log_prior + log_det - self.proposal.log_prob(z[inside])).to(z)
        log_weights = log_weights.nan_to_num(nan=-math.inf)
        if not bool(torch.isfinite(log_weights).any()):
            raise ValueError(
                f"none of the {size} candidates of sampling-importance-resampling lies in the "
                "truncation region with a positive prior density: raise oversampling"
            )
        total = torch.logsumexp(log_weights, 0)
        ess = float(torch.exp(2 * total - torch.logsumexp(2 * log_weights, 0)))
        if ess < num_samples:
            warnings.warn(
                f"sampling-importance-resampling of the truncated prior has an effective sample "
                f"size of {ess:.0f} for {num_samples} draws: draws repeat, and lean towards the "
                "proposal; raise oversampling",
                RuntimeWarning,
                stacklevel=3,
            )
        index = torch.multinomial(torch.softmax(log_weights, 0), num_samples, replacement=True)
        self.stats = {
            "sampler": "sir",
            "acceptance": float(inside.float().mean()),
            "prior_mass": float(torch.exp(total - math.log(size))),
            "ess": ess,
            "log_q_evaluations": size,
        }
        return {n: v[index] for n, v in values.items()}


def _simulate_given(problem: Problem, theta: Mapping[str, Tensor]) -> dict[str, Tensor]:
    r"""Simulates the observed sites of ``problem`` given latent values ``[N, *site.shape]``,
    :math:`x_i \sim p(x \mid \theta_i)`, in batches."""
    size = len(next(iter(theta.values())))
    chunks = [
        problem.sample_predictive({n: v[start : start + _BATCH] for n, v in theta.items()})
        for start in range(0, size, _BATCH)
    ]
    return {n: torch.cat([c[n] for c in chunks]) for n in chunks[0]}


def fit_sequential(
    estimator: nn.Module,  # a PosteriorEstimator
    num_simulations: int,
    rounds: int,
    x_o: Mapping[str, Tensor],
    train: Callable[..., tuple[list[float], int]],
    *,
    truncation: float = 1e-4,
    draws: int | None = None,
    oversampling: int | None = None,
    seed: int | None = None,
    validation_fraction: float = 0.1,
) -> list[float]:
    r"""Trains an estimator in :math:`R` rounds for one observation :math:`x_o`: truncated
    sequential posterior estimation (TSNPE, Deistler et al., 2022), the sequential fit of
    :meth:`~condgen.amortized.PosteriorEstimator.fit`.

    The budget :math:`N` is split into shares :math:`N_1, \dots, N_R` (:func:`round_sizes`).
    Round 1 simulates :math:`(\theta_i, x_i) \sim p(\theta) p(x \mid \theta)`; round
    :math:`r > 1` draws :math:`N_r` parameters from the prior truncated to the region of the
    estimate :math:`q_{r-1}` after round :math:`r - 1` (:class:`TruncatedPrior`),

    .. math:: \tilde p_r(\theta) \propto p(\theta) \, \mathbb{1}[\log q_{r-1}(\theta \mid
        x_o) \ge \tau_\epsilon],

    and simulates :math:`x_i \sim p(x \mid \theta_i)` (the model run with the latent sites
    fixed, :meth:`condgen.Problem.sample_predictive`). After each round the estimator is
    trained again, from its current weights, with its ordinary loss on all simulations so far:
    they come from the mixture :math:`\bar p = \sum_r (N_r / N) \tilde p_r`, which on the
    intersection of the regions is proportional to the prior, so that the loss's minimiser
    there is the posterior :math:`p(\theta \mid x_o)` itself, with no correction of the
    proposal (unlike SNPE-A/B/C). Each simulation is held out for validation (early stopping)
    or trained on once and for all, in the round that makes it, so that the validation loss
    of a later round is not measured on what earlier rounds trained on. The argument holds as
    long as each region contains the posterior's support, i.e. as long as the estimates are
    not over-confident; :math:`\epsilon` sets the margin.

    The diagnostics of each round are appended to the estimator's ``sequential_rounds``:
    ``round``, ``simulations``, ``sampler`` (``"prior"``, ``"rejection"`` or ``"sir"``),
    ``threshold``, ``acceptance``, ``prior_mass``, ``ess``, ``log_q_evaluations`` and
    ``epochs``. A ``prior_mass`` that does not shrink from round to round says that the
    truncation gains little; an ``ess`` below the round's simulations says that SIR repeated
    parameters.

    Arguments:
        estimator: The estimator, trained or not (its standardisation is fixed by its first
            training).
        num_simulations: The budget :math:`N` over all rounds.
        rounds: :math:`R \ge 2`.
        x_o: The observation by observed site, checked.
        train: Trains the estimator on simulations, ``train(simulations, seed=...,
            label=..., held_out=...)``, returning the epochs' losses and the simulations used.
        truncation, draws, oversampling: See :class:`TruncatedPrior`.
        seed: Seeds every round (its simulations, truncation and training), or None for the
            global random state.
        validation_fraction: The fraction of each round's simulations held out.

    Returns:
        The training losses of all epochs of all rounds.

    References:
        | Truncated proposals for scalable and hassle-free simulation-based inference
          (Deistler, Goncalves and Macke, 2022)
        | https://arxiv.org/abs/2210.04815
    """
    sizes = round_sizes(num_simulations, rounds)
    if not 0 < truncation < 1:
        raise ValueError(f"truncation must lie in (0, 1), got {truncation!r}")
    if seed is None:
        seeds: list[tuple[int | None, int | None]] = [(None, None)] * rounds
    else:
        generator = torch.Generator().manual_seed(check_seed(seed))
        seeds = torch.randint(0, MAX_SEED, (rounds, 2), generator=generator).tolist()
    if estimator.x_o is not None and estimator.sequential_rounds:
        previous = estimator._flat_observations(estimator.x_o)
        if not torch.equal(previous, estimator._flat_observations(x_o).to(previous)):
            raise ValueError(
                "x_o differs from the observation this estimator was trained for sequentially "
                "(estimator.x_o): make a new estimator for another observation"
            )
    base = int(estimator.num_simulations)
    estimator.x_o = {n: v.detach().clone() for n, v in x_o.items()}
    simulations: dict[str, Tensor] = {}
    held_out = torch.zeros(0, dtype=torch.bool)
    losses: list[float] = []
    used = 0
    for r, (size, (simulation_seed, training_seed)) in enumerate(zip(sizes, seeds, strict=True)):
        if r == 0:
            new = estimator.simulate(size, seed=simulation_seed)
            stats: dict[str, Any] = {"sampler": "prior", "threshold": -math.inf}
            stats |= {"acceptance": 1.0, "prior_mass": 1.0, "ess": float(size)}
            stats |= {"log_q_evaluations": 0}
        else:
            with seeded(simulation_seed, estimator.latent_loc.device):
                region = TruncatedPrior(estimator, x_o, truncation, draws, oversampling)
                theta = region.sample(size)
                new = {**theta, **_simulate_given(region.problem, theta)}
            stats = {**region.stats, "threshold": region.threshold}
        simulations = {
            n: v if n not in simulations else torch.cat([simulations[n], v.to(simulations[n])])
            for n, v in new.items()
        }
        with seeded(training_seed):
            mask = torch.zeros(size, dtype=torch.bool)
            mask[split(size, validation_fraction, mask.device)[1]] = True
        held_out = torch.cat([held_out, mask])
        label = f"{estimator.label} round {r + 1}/{rounds}"
        epochs, used = train(simulations, seed=training_seed, label=label, held_out=held_out)
        estimator.num_simulations.fill_(base + used)
        losses += epochs
        estimator.sequential_rounds.append(
            {"round": r + 1, "simulations": size, **stats, "epochs": len(epochs)}
        )
    return losses
