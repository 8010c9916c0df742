r"""Sequential Monte Carlo along a path prior: the particle loop and the kernel interface that
every SMC method (``"smc"``, ``"tds"``, the sweeps of ``"gibbs"``) shares."""

from __future__ import annotations

__all__ = ["SMCKernel", "SMCMethod", "SMCRun", "run_smc"]

import abc
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm import tqdm

from ..posterior import Posterior, systematic_resample
from ..problem import Problem
from .path import PathMethod, PathSetup, ancestral_step


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
        path: With ``keep_path``: for each particle, its whole trajectory, shaped
            ``[num_particles, steps + 1, *site.shape]``.
    """

    x: Tensor
    log_weights: Tensor
    ess_trace: list[float]
    resampled: int
    ancestors: int
    path: Tensor | None = field(default=None, repr=False)

    @property
    def ess(self) -> float:
        return float(1 / self.log_weights.exp().pow(2).sum())


def _resample(log_w: Tensor, conditional: bool) -> Tensor:
    if not conditional:
        return systematic_resample(log_w, len(log_w))
    # conditional SMC: particle 0 keeps the reference, the others are drawn (multinomial)
    weights = log_w.detach().double().softmax(0)
    index = torch.multinomial(weights, len(log_w), replacement=True)
    index[0] = 0
    return index


def run_smc(
    kernel: SMCKernel,
    num_particles: int,
    ess_threshold: float,
    name: str,
    reference: Tensor | None = None,
    keep_path: bool = False,
    bar: tqdm | None = None,
) -> SMCRun:
    r"""The particle loop shared by the SMC methods: from :math:`x_1 \sim \mathcal{N}(0,
    \sigma_1^2 I)` along the kernel's grid, with adaptive systematic resampling when the ESS
    falls below ``ess_threshold`` times the number of particles, and the kernel's last weights.

    With a ``reference`` trajectory (shaped ``[K + 1, *site.shape]``), particle 0 follows it
    and is never resampled away: the conditional SMC sweep of particle Gibbs (Andrieu et al.,
    2010), which leaves the exact posterior of the path invariant.

    Raises:
        FloatingPointError: If the particles or every weight become NaN or infinite; the message
            names the method and the step.
    """
    setup, grid = kernel.setup, kernel.grid
    problem = setup.problem
    x = kernel.sigmas[0] * torch.randn(
        num_particles, *setup.shape, device=problem.device, dtype=problem.dtype
    )
    if reference is not None:
        x[0] = reference[0]
    state = kernel.start(x)
    log_w = state["log_twist"].clone()
    origin = torch.arange(num_particles, device=x.device)
    path = [x] if keep_path else None
    parents = []
    ess_trace, resampled = [], 0
    for i in range(len(grid) - 1):
        log_w = log_w + kernel.reweight(state, i)
        ess = float(1 / log_w.softmax(0).pow(2).sum())
        ess_trace.append(ess)
        index = None
        if not math.isfinite(ess):
            _raise(name, i, grid[i])
        if ess < ess_threshold * num_particles:
            index = _resample(log_w, reference is not None)
            state = {k: v[index] for k, v in state.items()}
            origin = origin[index]
            log_w = torch.zeros_like(log_w)
            resampled += 1
        parents.append(index)
        state, increment = kernel.move(state, i, None if reference is None else reference[i + 1])
        log_w = log_w + increment
        if not torch.isfinite(state["x"]).all() or not torch.isfinite(log_w).any():
            _raise(name, i, grid[i])
        if keep_path:
            path.append(state["x"])
        if bar is not None:
            bar.update()
    x0, increment = kernel.finish(state)
    log_w = torch.nan_to_num(log_w + increment, nan=-math.inf)
    if not torch.isfinite(log_w).any():
        _raise(name, len(grid) - 1, grid[-1])
    return SMCRun(
        x0.detach(),
        log_w - log_w.logsumexp(0),
        ess_trace,
        resampled,
        len(origin.unique()),
        _trajectories(path, parents) if keep_path else None,
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


def _raise(name: str, step: int, t: Tensor) -> None:
    raise FloatingPointError(
        f"method '{name}': the particles or every weight became NaN or infinite at step {step} "
        f"(t={float(t):.4f}); increase 'steps' or check the likelihood at that point"
    )


class SMCMethod(PathMethod):
    r"""Base of the SMC methods on a path prior: the loop of :func:`run_smc` with the kernel of
    :meth:`kernel`, the weighted particles as a Posterior.

    Arguments:
        steps: The number of steps.
        ess_threshold: Resample when ESS / particles falls below this (1 resamples always).
        batch_size: Particles whose network evaluations run at once.

    Stats:
        ``ess`` (of the final weights), ``ancestors`` (distinct first-time particles the final
        ones descend from), ``ess_trace`` (before each step's resampling), ``resampled``
        (steps that resampled), ``nfe``, ``kernel`` (the name of the kernel that moved the
        particles).
    """

    family = "bayesian"

    def __init__(self, steps: int = 100, ess_threshold: float = 0.5, batch_size: int = 1024):
        super().__init__(steps=steps, batch_size=batch_size)
        if not 0 <= ess_threshold <= 1:
            raise ValueError(f"ess_threshold must lie in [0, 1], got {ess_threshold}")
        self.ess_threshold = ess_threshold

    @abc.abstractmethod
    def kernel(self, setup: PathSetup) -> SMCKernel:
        r"""The kernel that moves this method's particles along :meth:`grid`."""

    def run(self, problem: Problem, num_samples: int, progress: bool = True) -> Posterior:
        setup = self.setup(problem)
        kernel = self.kernel(setup)
        nfe_before = setup.prior.nfe
        with tqdm(total=self.steps, desc=self.name, disable=not progress) as bar:
            result = run_smc(kernel, num_samples, self.ess_threshold, self.name, bar=bar)
        batches = math.ceil(num_samples / self.batch_size)
        return Posterior(
            problem,
            {setup.site: result.x.unsqueeze(0)},
            log_weights=result.log_weights.unsqueeze(0),
            stats={
                "nfe": math.ceil((setup.prior.nfe - nfe_before) / batches),
                "ess": result.ess,
                "ancestors": result.ancestors,
                "ess_trace": result.ess_trace,
                "resampled": result.resampled,
                "kernel": kernel.name,
            },
            method=self.name,
        )

    def sample_batch(self, setup: PathSetup, num_particles: int, bar: tqdm) -> Tensor:
        raise TypeError(f"{type(self).__name__} moves all particles together; call run()")
