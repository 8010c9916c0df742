r"""Sequential Monte Carlo along a path prior: the particle loop and the kernel interface that
every SMC method (``"smc"``, ``"tds"``, the sweeps of ``"gibbs"``) shares."""

from __future__ import annotations

__all__ = [
    "Particles",
    "SMCKernel",
    "SMCMethod",
    "SMCRun",
    "SMCStep",
    "collect",
    "run_smc",
]

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm import tqdm

from .._gaussian import normal_log_prob
from .._resampling import systematic_resample
from ..posterior import Posterior
from ..priors.samplers import Step, ancestral_step, integrate
from ..problem import Problem
from .path import PathMethod, PathSetup
from .runs import DEFAULT_MAX_RHAT, ParticleRun, pool_runs, split_particles, until_agreement


class SMCKernel(abc.ABC):
    r"""The moves of a sequential Monte Carlo sampler along a path, on a fixed time grid
    :math:`1 = t_0 > \dots > t_K = t_\text{min}`.

    A kernel keeps, per particle, a state: a dict of tensors with a leading particle
    dimension, at least ``"x"`` (the point :math:`x_t`) and ``"log_twist"`` (the log twist
    :math:`\log \tilde p_t(y \mid x_t)`). The loop (:func:`run_smc`) resamples whole states.
    At step :math:`i` (from :math:`t_i` to :math:`t_{i+1}`) it adds :meth:`reweight` to the
    log-weights (a term that depends on :math:`x_{t_i}` alone, as in a fully adapted filter),
    resamples, then adds what :meth:`move` returns.

    Arguments:
        setup: The problem's neural site, prior and likelihood.
        grid: The decreasing times, shaped ``[K + 1]``.
        batch_size: Particles whose network evaluations run at once.
    """

    #: The kernel's name, reported in the stats of a run.
    name: str

    def __init__(self, setup: PathSetup, grid: Tensor, batch_size: int):
        self.setup, self.grid, self.batch_size = setup, grid, batch_size
        self.alphas, self.sigmas = setup.prior.schedule(grid)
        # the ancestral kernel N(a_i x_0 + b_i x_t, c_i^2 I), its coefficients for every step
        one, zero = torch.ones_like(grid[1:]), torch.zeros_like(grid[1:])
        scales = (self.alphas[:-1], self.sigmas[:-1], self.alphas[1:], self.sigmas[1:])
        self.coef_x0, _ = ancestral_step(zero, one, *scales)
        self.coef_xt, self.std = ancestral_step(one, zero, *scales)

    def prior_mean(self, i: int, x_t: Tensor, x0: Tensor) -> Tensor:
        r"""The mean of the ancestral kernel :math:`p(x_{t_{i+1}} \mid x_{t_i})`."""
        return self.coef_x0[i] * x0 + self.coef_xt[i] * x_t

    def denoise(self, x_t: Tensor, i: int) -> Tensor:
        r"""The prior's denoised estimate at time :math:`t_i`, in batches, without a graph."""
        with torch.no_grad():
            t = self.grid[i]
            return torch.cat([self.setup.prior.denoise(c, t) for c in x_t.split(self.batch_size)])

    def transition_log_prob(self, state: dict[str, Tensor], i: int, x_next: Tensor) -> Tensor:
        r""":math:`\log p(x_{t_{i+1}} \mid x^j_{t_i})` of the ancestral kernel for one point
        ``x_next`` and every particle :math:`j` (after :meth:`reweight`, from the kernel's state:
        its ``"mean"``, else its denoised ``"x0"``, else a new denoiser evaluation)."""
        mean = state.get("mean")
        if mean is None:
            x0 = state["x0"] if "x0" in state else self.denoise(state["x"], i)
            mean = self.prior_mean(i, state["x"], x0)
        return normal_log_prob(x_next.expand_as(mean), mean, self.std[i])

    @abc.abstractmethod
    def start(self, x: Tensor) -> dict[str, Tensor]:
        r"""The state of particles ``x`` drawn from :math:`p(x_1)` at time :math:`t_0`."""

    def reweight(self, state: dict[str, Tensor], i: int) -> Tensor:
        r"""The log-weight increment known before the move of step ``i``; may add entries to
        ``state`` for :meth:`move`."""
        return torch.zeros_like(state["log_twist"])

    @abc.abstractmethod
    def move(
        self, state: dict[str, Tensor], i: int, reference: Tensor | None
    ) -> tuple[dict[str, Tensor], Tensor]:
        r"""Moves every particle from :math:`t_i` to :math:`t_{i+1}`; with a ``reference``
        (conditional SMC), particle 0 moves to that point instead of a draw.

        Returns:
            The new state and the log-weight increment.
        """

    def finish(self, state: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        r"""The draws :math:`x = D(x_{t_K}, t_K)` and the last log-weight increment
        :math:`\log p(y \mid x) - \log \tilde p_{t_K}(y \mid x_{t_K})`, which makes the
        weighted particles target the posterior."""
        x0 = state.get("x0")
        if x0 is None:
            x0 = self.denoise(state["x"], len(self.grid) - 1)
        with torch.no_grad():
            return x0, self.setup.log_likelihood(x0) - state["log_twist"]


@dataclass
class SMCRun:
    r"""What :func:`run_smc` returns.

    Attributes:
        x: The draws, shaped ``[num_particles, *site.shape]``.
        log_weights: Their normalised log-weights, shaped ``[num_particles]``.
        ess_trace: The effective sample size before each step's resampling decision.
        resampled: How many steps resampled.
        ancestors: How many distinct particles of the first time the final ones descend from
            (the ESS does not show a collapse that resampling hides; this does).
        kernel: The name of the kernel that moved the particles.
        log_evidence: The estimate :math:`\log \hat Z` of :math:`\log p(y)` (of the path
            discretised on the grid): the sum over the resampling epochs of the log mean
            unnormalised weight (meaningless for a conditional sweep).
        path: With ``keep_path``: for each particle, its whole trajectory, shaped
            ``[num_particles, steps + 1, *site.shape]``.
    """

    x: Tensor
    log_weights: Tensor
    ess_trace: list[float]
    resampled: int
    ancestors: int
    kernel: str
    log_evidence: float
    path: Tensor | None = field(default=None, repr=False)

    @property
    def ess(self) -> float:
        return float(1 / self.log_weights.exp().pow(2).sum())


def _log_mean_exp(log_w: Tensor) -> float:
    return float(log_w.double().logsumexp(0)) - math.log(len(log_w))


def _resample(log_w: Tensor, conditional: bool) -> Tensor:
    if not conditional:
        return systematic_resample(log_w, len(log_w))
    # conditional SMC: particle 0 keeps the reference, the others are drawn (multinomial)
    weights = log_w.detach().double().softmax(0)
    index = torch.multinomial(weights, len(log_w), replacement=True)
    index[0] = 0
    return index


@dataclass
class Particles:
    r"""The state of :class:`SMCStep`: the kernel's per-particle state, the log-weights, the
    index of each particle's first-time ancestor, the kernel, the log evidence of the
    resampling epochs so far, and, with ``keep_path``, the points and the resampling indices of
    every step."""

    state: dict[str, Tensor]
    log_w: Tensor
    origin: Tensor
    kernel: SMCKernel
    resampled: int = 0
    log_evidence: float = 0.0
    path: list[Tensor] | None = None
    parents: list[Tensor | None] = field(default_factory=list)


class SMCStep(Step):
    r"""One step of a particle filter along the path, for :func:`~condgen.priors.samplers.
    integrate`: the kernel's :meth:`~SMCKernel.reweight`, systematic resampling when the
    effective sample size falls below ``ess_threshold`` times the number of particles, then the
    kernel's :meth:`~SMCKernel.move`. Each step reports its ESS before resampling (``"ess"``).

    Arguments:
        kernel: The moves and twists.
        ess_threshold: The resampling threshold.
        reference: A trajectory shaped ``[K + 1, *site.shape]`` that particle 0 follows and
            that resampling never removes (conditional SMC).
        keep_path: Whether to keep every particle's trajectory.
    """

    def __init__(
        self,
        kernel: SMCKernel,
        ess_threshold: float,
        reference: Tensor | None = None,
        keep_path: bool = False,
    ):
        self.kernel, self.ess_threshold = kernel, ess_threshold
        self.reference, self.keep_path = reference, keep_path

    def init(self, x: Tensor, t: Tensor) -> Particles:
        if self.reference is not None:
            x[0] = self.reference[0]
        state = self.kernel.start(x)
        origin = torch.arange(len(x), device=x.device)
        path = [x] if self.keep_path else None
        return Particles(state, state["log_twist"].clone(), origin, self.kernel, path=path)

    def step(self, particles: Particles, i: int, t: Tensor, s: Tensor) -> tuple[Particles, dict]:
        p = particles
        log_w = p.log_w + self.kernel.reweight(p.state, i)
        ess = float(1 / log_w.softmax(0).pow(2).sum())
        state, origin, resampled, index = p.state, p.origin, p.resampled, None
        log_evidence = p.log_evidence
        if ess < self.ess_threshold * len(log_w):  # False for a NaN ESS: finite() reports it
            index = _resample(log_w, self.reference is not None)
            if self.reference is not None:
                index[0] = self._reference_ancestor(p, i)
            state = {k: v[index] for k, v in state.items()}
            origin, resampled = origin[index], resampled + 1
            log_evidence += _log_mean_exp(log_w)
            log_w = torch.zeros_like(log_w)
        reference = None if self.reference is None else self.reference[i + 1]
        state, increment = self.kernel.move(state, i, reference)
        path = None if p.path is None else [*p.path, state["x"]]
        parents = [*p.parents, index]
        new = Particles(
            state, log_w + increment, origin, p.kernel, resampled, log_evidence, path, parents
        )
        return new, {"ess": ess}

    def _reference_ancestor(self, particles: Particles, i: int) -> Tensor:
        r"""Ancestor sampling (Lindsten, Jordan and Schön, 2014): the reference's next point
        :math:`x'_{i+1}` takes the ancestor :math:`j` with probability :math:`\propto w^j\,
        p(x'_{i+1} \mid x^j_i) / \tilde p_i(y \mid x^j_i)`, the conditional of its ancestor
        index given all the particles, so that the sweep need not follow the old path back to
        its start."""
        p = particles
        transition = self.kernel.transition_log_prob(p.state, i, self.reference[i + 1])
        log_a = (p.log_w + transition - p.state["log_twist"]).double()
        log_a = torch.nan_to_num(log_a, nan=-math.inf)
        return torch.multinomial(log_a.softmax(0), 1)[0]

    def finite(self, particles: Particles) -> bool:
        finite_x = bool(torch.isfinite(particles.state["x"]).all())
        return finite_x and bool(torch.isfinite(particles.log_w).any())

    def finish(self, particles: Particles, t: Tensor) -> tuple[Particles, Tensor, Tensor]:
        r"""The particles, the draws and their unnormalised last log-weights."""
        x0, increment = self.kernel.finish(particles.state)
        return particles, x0, torch.nan_to_num(particles.log_w + increment, nan=-math.inf)


def run_smc(
    kernel: SMCKernel,
    x: Tensor,
    ess_threshold: float,
    error: Callable[[int, Tensor], Exception],
    reference: Tensor | None = None,
    keep_path: bool = False,
    bar: tqdm | None = None,
) -> SMCRun:
    r"""The particle filter of the SMC methods: from the points ``x`` drawn from
    :math:`\mathcal{N}(0, \sigma_1^2 I)` along the kernel's grid, by :class:`SMCStep` on the
    one sampler loop, with the kernel's last weights.

    With a ``reference`` trajectory (shaped ``[K + 1, *site.shape]``), particle 0 follows it
    and is never resampled away: the conditional SMC sweep of particle Gibbs (Andrieu et al.,
    2010), which leaves the exact posterior of the path invariant. At each resampling the
    reference draws its ancestor anew (ancestor sampling, Lindsten et al., 2014), so that the
    returned paths need not share the reference's early points.

    Arguments:
        kernel: The moves and twists.
        x: The particles at the first time.
        ess_threshold: Resample when ESS / particles falls below this.
        error: Builds the exception for a step (or the last weights) that is not finite.
        reference: See above.
        keep_path: Whether to return every particle's trajectory.
        bar: Optional progress bar.
    """
    step = SMCStep(kernel, ess_threshold, reference, keep_path)
    with torch.no_grad():
        output, stats = integrate(step, x, kernel.grid, error=error, bar=bar)
    return collect(output, stats["ess"], error, kernel.grid)


def collect(
    output: tuple[Particles, Tensor, Tensor],
    ess_trace: list[float],
    error: Callable[[int, Tensor], Exception],
    grid: Tensor,
) -> SMCRun:
    r"""The :class:`SMCRun` of what :meth:`SMCStep.finish` returned; raises ``error`` if every
    last weight is NaN or infinite."""
    particles, x0, log_w = output
    if not torch.isfinite(log_w).any():
        raise error(len(grid) - 1, grid[-1])
    path = particles.path
    return SMCRun(
        x0.detach(),
        log_w - log_w.logsumexp(0),
        ess_trace,
        particles.resampled,
        len(particles.origin.unique()),
        particles.kernel.name,
        particles.log_evidence + _log_mean_exp(log_w),
        None if path is None else _trajectories(path, particles.parents),
    )


def _trajectories(path: list[Tensor], parents: list[Tensor | None]) -> Tensor:
    r"""Each final particle's whole trajectory, traced back through the resampling indices."""
    index = torch.arange(len(path[-1]), device=path[-1].device)
    steps = [path[-1]]
    for states, parent in zip(reversed(path[:-1]), reversed(parents), strict=True):
        if parent is not None:
            index = parent[index]
        steps.append(states[index])
    return torch.stack(steps[::-1], dim=1)


class SMCMethod(PathMethod):
    r"""Base of the SMC methods on a path prior: :class:`SMCStep` with the kernel of
    :meth:`kernel`, run by the one sampler loop, the weighted particles as a Posterior.

    The particles are split among ``num_runs`` independent particle systems (as NUTS splits
    draws among chains). Each run is a chain of the Posterior, weighted by its evidence
    estimate :math:`\hat Z_r` in the pooled draws (:meth:`~condgen.Posterior.moments`,
    :meth:`~condgen.Posterior.resample`); ArviZ sees the runs as chains, so R-hat compares
    them. Runs that disagree beyond their Monte Carlo error (R-hat above ``rhat``, or log
    evidence estimates that differ by more than one unit) raise a
    :class:`~condgen.diagnostics.ConvergenceWarning` that suggests more particles. With a target
    ``rhat``, the particles double until the runs agree, up to ``max_particles``.

    Arguments:
        steps: The number of steps.
        ess_threshold: Resample when ESS / particles falls below this (1 resamples always).
        batch_size: Particles whose network evaluations run at once.
        num_runs: Independent particle systems.
        rhat: A quality target: double the particles until R-hat across the runs is below it
            and every other check passes; None checks (at 1.05) without doubling.
        max_particles: The cap of the doubling (default ``8 * num_samples``).

    Stats:
        ``log_evidence`` and ``log_evidence_se`` (:math:`\log p(y)` of the discretised path
        and its standard error from the spread of the runs), ``log_evidence_runs``, ``rhat``,
        ``ess_bulk``, ``warnings``; per run ``ancestors`` (distinct first-time particles the
        final ones descend from), ``resampled`` (steps that resampled); ``ess`` (of the final
        weights, summed over the runs), ``ess_trace`` (before each step's resampling, averaged
        over the runs), ``nfe`` (denoiser evaluations per particle), ``vjp`` (vector-Jacobian
        products of the denoiser per particle: one a step for the TDS moves), ``kernel`` (the
        name of the kernel that moved the particles), ``attempts`` (particles of each attempt).
    """

    family = "bayesian"

    def __init__(
        self,
        steps: int = 100,
        ess_threshold: float = 0.5,
        batch_size: int = 1024,
        num_runs: int = 4,
        rhat: float | None = None,
        max_particles: int | None = None,
    ):
        super().__init__(steps=steps, batch_size=batch_size)
        if not 0 <= ess_threshold <= 1:
            raise ValueError(f"ess_threshold must lie in [0, 1], got {ess_threshold}")
        if num_runs < 1:
            raise ValueError(f"num_runs must be at least 1, got {num_runs}")
        if rhat is not None and not rhat > 1:
            raise ValueError(f"rhat must be above 1 (e.g. 1.01), got {rhat}")
        self.ess_threshold, self.num_runs = ess_threshold, num_runs
        self.rhat, self.max_particles = rhat, max_particles

    @abc.abstractmethod
    def kernel(self, setup: PathSetup) -> SMCKernel:
        r"""The kernel that moves this method's particles along :meth:`grid`."""

    def run(self, problem: Problem, num_samples: int, progress: bool = True) -> Posterior:
        def attempt(num_particles: int) -> Posterior:
            return super(SMCMethod, self).run(problem, num_particles, progress)

        return until_agreement(attempt, num_samples, self.rhat, self.max_particles)

    def batches(self, num_samples: int) -> list[int]:
        # the particles of a run interact through resampling: one batch per run
        return [split_particles(num_samples, self.num_runs)] * self.num_runs

    def step(self, setup: PathSetup) -> SMCStep:
        return SMCStep(self.kernel(setup), self.ess_threshold)

    def posterior(self, setup: PathSetup, results: list, stats: dict) -> Posterior:
        grid = self.grid(setup)
        runs = []
        for output in results:
            result = collect(output, stats["ess_trace"], self.unstable, grid)
            run_stats = {"ess": result.ess, "ancestors": result.ancestors}
            run_stats["resampled"] = result.resampled
            values = {setup.site: result.x}
            runs.append(ParticleRun(values, result.log_weights, result.log_evidence, run_stats))
        stats = {**stats, "kernel": result.kernel}
        return pool_runs(
            setup.problem,
            runs,
            stats,
            self.name,
            max_rhat=DEFAULT_MAX_RHAT if self.rhat is None else self.rhat,
            suggestion="use more particles (num_samples) or set rhat= to double them until "
            "the runs agree",
        )
