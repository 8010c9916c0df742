r"""The sampler core of Gaussian probability paths: one loop, and the steps it runs.

Every sampler of a path prior, unconditional or conditioned, is a :class:`Step` run by
:func:`integrate` over a decreasing time grid: the loop owns the grid, the progress bar, the
finiteness check and the per-step statistics; a step owns one move from :math:`t` to
:math:`s < t` and the state it carries (as blackjax's ``init``/``step`` pairs return
``(state, info)``). The fixed-step samplers (Euler, Heun, DDIM, DDPM) are steps written once
against a denoiser :math:`D(x_t, t)`, so any method that changes the denoised estimate (PiGDM,
classifier and classifier-free guidance) runs with any of them; methods that change the move
itself (DPS, Langevin, SMC) wrap a step or replace it.
"""

from __future__ import annotations

__all__ = [
    "DDIM",
    "SAMPLERS",
    "Euler",
    "Heun",
    "PathStep",
    "Step",
    "ancestral_step",
    "check_sampler",
    "integrate",
    "make_sampler",
    "sample_path",
    "time_grid",
]

import abc
import itertools
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor

from .schedules import Schedule

Denoiser = Callable[[Tensor, Tensor], Tensor]


def time_grid(schedule: Schedule, steps: int, device=None, dtype=None) -> Tensor:
    r"""The decreasing times :math:`1 = t_0 > t_1 > \dots > t_N = t_\text{min}`, uniform in
    :math:`t`, for ``steps`` :math:`= N` steps."""
    if steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    t_min = max(schedule.t_min, 1e-5)
    return torch.linspace(1.0, t_min, steps + 1, device=device, dtype=dtype)


def ancestral_step(
    x_t: Tensor, x0: Tensor, alpha_t, sigma_t, alpha_s, sigma_s, eta: float = 1.0
) -> tuple[Tensor, Tensor]:
    r"""The DDIM update from :math:`t` to :math:`s < t` given a denoised estimate :math:`x_0`.

    .. math:: x_s = \alpha_s x_0 + \sqrt{\sigma_s^2 - c^2}\,\hat\epsilon + c z, \quad
        \hat\epsilon = (x_t - \alpha_t x_0) / \sigma_t,

    with :math:`c^2 = \eta^2 \mathrm{Var}[x_s \mid x_t, x_0]`; ``eta=1`` is the ancestral
    (DDPM) kernel :math:`p(x_s \mid x_t)`, ``eta=0`` deterministic DDIM.

    Returns:
        The mean of :math:`x_s` and its standard deviation :math:`c`.

    References:
        | Denoising Diffusion Implicit Models (Song et al., 2021)
        | https://arxiv.org/abs/2010.02502
    """
    eps = (x_t - alpha_t * x0) / sigma_t
    var = eta**2 * (sigma_t**2 - (alpha_t / alpha_s) ** 2 * sigma_s**2) * sigma_s**2 / sigma_t**2
    var = var.clamp(min=0.0)
    mean = alpha_s * x0 + (sigma_s**2 - var).clamp(min=0.0).sqrt() * eps
    return mean, var.sqrt()


class Step(abc.ABC):
    r"""One move of a sampler along a decreasing time grid, with the state it carries.

    :func:`integrate` calls :meth:`init` at :math:`t_0`, then :meth:`step` for each pair
    :math:`(t_i, t_{i+1})`, checking :meth:`finite` after each, and returns :meth:`finish`.
    The default state is ``{"x": x_t}``.
    """

    def init(self, x: Tensor, t: Tensor) -> Any:
        r"""The state of the points ``x`` at the first time ``t``."""
        return {"x": x}

    @abc.abstractmethod
    def step(self, state: Any, i: int, t: Tensor, s: Tensor) -> tuple[Any, dict[str, Any]]:
        r"""Moves the state from time ``t`` (grid index ``i``) to ``s < t``.

        Returns:
            The new state and the step's statistics (a dict of scalars, possibly empty).
        """

    @abc.abstractmethod
    def finish(self, state: Any, t: Tensor) -> Any:
        r"""The result at the last time ``t``."""

    def finite(self, state: Any) -> bool:
        r"""Whether the state is usable (by default: every point is finite)."""
        return bool(torch.isfinite(state["x"]).all())


class PathStep(Step):
    r"""A fixed-step sampler of a Gaussian path written against a denoiser; the result is the
    last point denoised once, :math:`x = D(x_{t_\text{min}}, t_\text{min})`.

    Subclasses implement :meth:`move`, which may reuse a denoised estimate the caller already
    has (a guided method that differentiated through it, say).

    Arguments:
        denoise: The denoiser :math:`D(x_t, t)`, ``t`` a scalar tensor.
        schedule: The path :math:`(\alpha_t, \sigma_t)`.
    """

    def __init__(self, denoise: Denoiser, schedule: Schedule):
        self.denoise, self.schedule = denoise, schedule

    @abc.abstractmethod
    def move(self, x: Tensor, t: Tensor, s: Tensor, x0: Tensor | None = None) -> Tensor:
        r"""The point at ``s`` from ``x`` at ``t``; ``x0`` is :math:`D(x, t)` if known."""

    def step(self, state: dict, i: int, t: Tensor, s: Tensor) -> tuple[dict, dict]:
        return {"x": self.move(state["x"], t, s)}, {}

    def finish(self, state: dict, t: Tensor) -> Tensor:
        return self.denoise(state["x"], t)

    def velocity(self, x: Tensor, t: Tensor, x0: Tensor | None = None) -> Tensor:
        r"""The probability-flow velocity :math:`\dot\alpha_t D + \dot\sigma_t (x_t - \alpha_t
        D) / \sigma_t` at :math:`(x, t)`."""
        x0 = self.denoise(x, t) if x0 is None else x0
        return self.schedule.velocity(x, x0, t, 0)


class Euler(PathStep):
    r"""Euler's method on the probability-flow ODE: deterministic, one NFE a step."""

    def move(self, x, t, s, x0=None):
        return x + (s - t) * self.velocity(x, t, x0)


class Heun(PathStep):
    r"""Heun's second-order method on the probability-flow ODE: deterministic, two NFE a
    step (Karras et al., 2022)."""

    def move(self, x, t, s, x0=None):
        v = self.velocity(x, t, x0)
        x_euler = x + (s - t) * v
        return x + (s - t) * (v + self.velocity(x_euler, s)) / 2


class DDIM(PathStep):
    r"""The DDIM update :func:`ancestral_step` with stochasticity ``eta`` (0 deterministic, 1
    the ancestral DDPM kernel).

    Arguments:
        denoise, schedule: See :class:`PathStep`.
        eta: The stochasticity :math:`\eta`.
        generator: Optional random generator for the noise (the global one by default).
    """

    def __init__(
        self,
        denoise: Denoiser,
        schedule: Schedule,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
    ):
        super().__init__(denoise, schedule)
        self.eta, self.generator = eta, generator

    def move(self, x, t, s, x0=None):
        x0 = self.denoise(x, t) if x0 is None else x0
        mean, std = ancestral_step(x, x0, *self.schedule(t), *self.schedule(s), eta=self.eta)
        if self.eta == 0:
            return mean
        noise = torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)
        return mean + std * noise


SAMPLERS: dict[str, Callable[..., PathStep]] = {
    "euler": Euler,
    "heun": Heun,
    "ddim": DDIM,
    "ddpm": partial(DDIM, eta=1.0),
}


def make_sampler(
    sampler: str,
    denoise: Denoiser,
    schedule: Schedule,
    eta: float | None = None,
    generator: torch.Generator | None = None,
) -> PathStep:
    r"""The step of the sampler named ``sampler`` (a key of :data:`SAMPLERS`).

    Arguments:
        sampler: ``"euler"``, ``"heun"``, ``"ddim"`` or ``"ddpm"``.
        denoise: The denoiser :math:`D(x_t, t)`.
        schedule: The path.
        eta: The stochasticity of ``"ddim"``/``"ddpm"`` (their defaults 0 and 1); an error for
            the ODE samplers, which have none.
        generator: Optional random generator of the stochastic samplers.
    """
    check_sampler(sampler, eta)
    if sampler in ("ddim", "ddpm"):
        options = {"generator": generator} if eta is None else {"generator": generator, "eta": eta}
        return SAMPLERS[sampler](denoise, schedule, **options)
    return SAMPLERS[sampler](denoise, schedule)


def check_sampler(sampler: str, eta: float | None = None) -> None:
    r"""Raises a ValueError naming the argument if ``sampler`` is unknown or ``eta`` is given
    to a sampler without noise."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; samplers are {list(SAMPLERS)}")
    if eta is not None and sampler not in ("ddim", "ddpm"):
        raise ValueError(
            f"eta sets the noise of 'ddim' and 'ddpm'; the sampler {sampler!r} is a "
            "deterministic ODE solver: leave eta unset or use sampler='ddim'"
        )


def _nonfinite(i: int, t: Tensor) -> Exception:
    return FloatingPointError(f"the sampler produced non-finite values at step {i} (t={t:.4f})")


def integrate(
    step: Step,
    x: Tensor,
    grid: Tensor,
    *,
    error: Callable[[int, Tensor], Exception] = _nonfinite,
    bar=None,
) -> tuple[Any, dict[str, list]]:
    r"""The one sampler loop: runs ``step`` from the points ``x`` at ``grid[0]`` along the
    decreasing ``grid``.

    Arguments:
        step: The step (a sampler, a guided method, an SMC kernel).
        x: The points at the first time, e.g. :math:`x_1 \sim \mathcal{N}(0, \sigma_1^2 I)`.
        grid: The decreasing times, shaped ``[N + 1]``.
        error: Builds the exception raised when a step leaves a non-finite state, from the
            step's index and time (methods name themselves and the option to change).
        bar: Optional progress bar, updated once a step.

    Returns:
        The step's result and its statistics, each a list over the steps.

    Example:
        >>> import torch
        >>> from condgen.priors import GaussianMixturePrior
        >>> from condgen.priors.samplers import Heun, integrate, time_grid
        >>> prior = GaussianMixturePrior(torch.ones(1), torch.zeros(1, 2), torch.eye(2)[None])
        >>> grid = time_grid(prior.schedule, 16)
        >>> x, stats = integrate(Heun(prior.denoise, prior.schedule), torch.randn(500, 2), grid)
        >>> x.shape, round(x.std().item(), 1)
        (torch.Size([500, 2]), 1.0)
    """
    state = step.init(x, grid[0])
    stats: dict[str, list] = {}
    for i, (t, s) in enumerate(itertools.pairwise(grid)):
        state, info = step.step(state, i, t, s)
        if not step.finite(state):
            raise error(i, t)
        for key, value in info.items():
            stats.setdefault(key, []).append(value)
        if bar is not None:
            bar.update()
    return step.finish(state, grid[-1]), stats


def sample_path(
    denoise: Denoiser,
    schedule: Schedule,
    shape: torch.Size,
    event_dim: int,
    *,
    sampler: str = "heun",
    steps: int = 64,
    eta: float | None = None,
    x_init: Tensor | None = None,
    generator: torch.Generator | None = None,
    device=None,
    dtype=None,
) -> Tensor:
    r"""Draws from a Gaussian path model by integrating from :math:`t = 1` to
    :math:`t_\text{min}`, then denoising once: :math:`x = D(x_{t_\text{min}}, t_\text{min})`.

    Samplers (:data:`SAMPLERS`):

    * ``"euler"``, ``"heun"``: the probability-flow ODE :math:`dx_t/dt = \dot\alpha_t D +
      \dot\sigma_t (x_t - \alpha_t D)/\sigma_t`, with Euler (1 NFE a step) or Heun's second
      order method (2 NFE a step); deterministic.
    * ``"ddim"`` with ``eta``: :math:`x_s = \alpha_s D + \sqrt{\sigma_s^2 - c^2}\,\hat\epsilon
      + c z` with :math:`c^2 = \eta^2 \mathrm{Var}[x_s \mid x_t, x]`; ``eta=0`` is
      deterministic DDIM, ``eta=1`` (``"ddpm"``) ancestral sampling.

    Arguments:
        denoise: The denoiser :math:`D(x_t, t)` with ``t`` shaped like the batch.
        schedule: The path.
        shape: The shape of the draws, ``[*batch, *event]``.
        event_dim: The number of event dimensions in ``shape``.
        sampler: ``"euler"``, ``"heun"``, ``"ddim"`` or ``"ddpm"``.
        steps: The number of steps.
        eta: The stochasticity of ``"ddim"``.
        x_init: Optional start :math:`x_1`; by default :math:`\sigma_1 \epsilon`.
        generator: Optional random generator.

    Returns:
        The draws (an active :class:`~condgen.priors.counting.EvaluationCounter` counts the
        denoiser evaluations of a path prior's :meth:`~condgen.priors.PathPrior.denoise`).
    """

    def batched(x_t: Tensor, t: Tensor) -> Tensor:
        return denoise(x_t, t.expand(x_t.shape[: x_t.dim() - event_dim]))

    if sampler == "ddim" and eta is None:
        eta = 0.0
    step = make_sampler(sampler, batched, schedule, eta, generator)
    with torch.no_grad():
        if x_init is None:
            x_init = torch.randn(shape, generator=generator, device=device, dtype=dtype)
            x_init = x_init * schedule(torch.ones((), dtype=x_init.dtype))[1].to(x_init.device)
        grid = time_grid(schedule, steps, device=x_init.device, dtype=x_init.dtype)
        x, _ = integrate(step, x_init, grid)
    return x
