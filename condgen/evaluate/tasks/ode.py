r"""Tasks of the simulation-based inference benchmark whose simulator is an ODE, solved in torch:
the SIR epidemic and the Lotka-Volterra predator-prey model, with sbibm's observations and
reference draws."""

from __future__ import annotations

__all__ = ["SIR", "LotkaVolterra", "solve_ode"]

import abc
import math
from collections.abc import Callable, Sequence
from typing import ClassVar

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor
from torch.distributions import Distribution

from .sbibm import SbibmTask


def solve_ode(
    rate: Callable[[Tensor], Tensor], initial: Tensor, interval: float, num_times: int, steps: int
) -> Tensor:
    r"""Solves the autonomous ODE :math:`y' = f(y)` at the times :math:`t_k = k \Delta`,
    :math:`k = 0, \dots, K - 1`, by the classical fourth-order Runge-Kutta method with a fixed
    step :math:`h = \Delta / n`:

    .. math:: y_{j+1} = y_j + \tfrac{h}{6} (k_1 + 2 k_2 + 2 k_3 + k_4), \quad
        k_1 = f(y_j), \; k_2 = f(y_j + \tfrac h2 k_1), \; k_3 = f(y_j + \tfrac h2 k_2), \;
        k_4 = f(y_j + h k_3),

    whose global error is :math:`O(h^4)`. Every operation is batched (a batch of parameters is
    solved at once) and differentiable.

    Arguments:
        rate: :math:`f`, taking and returning states shaped ``[*batch, k]``.
        initial: :math:`y(0)`, shaped ``[*batch, k]``.
        interval: :math:`\Delta`, the time between two outputs.
        num_times: :math:`K`, the number of outputs (the first is :math:`y(0)`).
        steps: :math:`n`, the Runge-Kutta steps per interval.

    Returns:
        :math:`y(t_k)`, shaped ``[*batch, K, k]``.

    Example:
        >>> import torch
        >>> y = solve_ode(lambda y: -y, torch.ones(1), 1.0, 3, steps=10)
        >>> torch.allclose(y[:, 0], torch.exp(-torch.arange(3.0)), atol=1e-5)
        True
    """
    h = interval / steps
    y, outputs = initial, [initial]
    for _ in range(num_times - 1):
        for _ in range(steps):
            k1 = rate(y)
            k2 = rate(y + h / 2 * k1)
            k3 = rate(y + h / 2 * k2)
            k4 = rate(y + h * k3)
            y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        outputs.append(y)
    return torch.stack(outputs, dim=-2)


class _ODETask(SbibmTask):
    r"""A log-normal prior on the ODE's parameters and observations of its solution at
    equally spaced times: the latent site ``"theta"``, the observed site ``"x"``."""

    exact = False
    prior_loc: ClassVar[tuple[float, ...]]
    prior_scale: ClassVar[tuple[float, ...]]
    interval: ClassVar[float]
    num_times: ClassVar[int] = 10
    observation_shape: ClassVar[tuple[int, ...]]

    def __init__(self, observation: int | Tensor | Sequence[float] = 1, steps: int | None = None):
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)):
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        if steps is not None and steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps}")
        self.steps = type(self).steps if steps is None else steps
        self._observe(observation, self.observation_shape)

    def prior(self) -> Distribution:
        r"""The log-normal prior of :math:`\theta`."""
        loc, scale = torch.tensor(self.prior_loc), torch.tensor(self.prior_scale)
        return dist.LogNormal(loc, scale).to_event(1)

    @abc.abstractmethod
    def likelihood(self, theta: Tensor) -> Distribution:
        r"""The distribution of the observations given ``theta`` ``[*batch, p]``: batch shape
        ``batch``, event shape :attr:`observation_shape`."""

    def model(self) -> None:
        theta = pyro.sample("theta", self.prior())
        pyro.sample("x", self.likelihood(theta))


class SIR(_ODETask):
    r"""The SIR epidemic task of the simulation-based inference benchmark, as a Pyro model.

    Susceptible, infected and recovered counts in a population of :math:`N = 10^6` follow

    .. math:: S' = -\beta S I / N, \quad I' = \beta S I / N - \gamma I, \quad R' = \gamma I,

    from :math:`(S, I, R)(0) = (N - 1, 1, 0)`, with the contact rate :math:`\beta` and the
    recovery rate :math:`\gamma` (per day). The prior is :math:`\beta \sim
    \mathrm{LogNormal}(\log 0.4, 0.5^2)`, :math:`\gamma \sim \mathrm{LogNormal}(\log 0.125,
    0.2^2)`, and the 10 observations are :math:`x_k \sim \mathrm{Binomial}(1000, I(t_k) /
    N)` at :math:`t_k = 17 k` days, :math:`k = 0, \dots, 9` (sbibm's every 17th day of 160).

    The ODE is solved for :math:`(\log(S/N), \log(I/N))`, whose rates :math:`(-\beta I/N,
    \beta S/N - \gamma)` are bounded and smooth (the exponential growth and decay of
    :math:`I` are exact for a constant rate), by :func:`solve_ode` with ``steps`` RK4 steps
    per 17 days (default 68, :math:`h = 0.25` day: the probabilities :math:`I/N` are then
    within :math:`10^{-7}` of a 4-times finer solve over the prior, far below the binomial's
    resolution :math:`10^{-3}`). The likelihood is the product of the binomials, so exact
    Bayesian methods (NUTS, SMC) apply; :meth:`reference_samples` gives sbibm's reference
    draws (likelihood-based: slice sampling, then rejection sampling from a flow fitted to
    it).

    Arguments:
        observation: sbibm's observation number, 1 to 10 (its :attr:`truth` and reference
            draws come with it), or 10 counts.
        steps: RK4 steps per observation interval.

    Raises:
        ImportError: If an observation number is given and sbibm is not installed.

    Example:
        >>> import torch
        >>> from condgen.evaluate import SIR
        >>> task = SIR(observation=torch.tensor([0.0, 1, 352, 40, 3, 0, 0, 0, 0, 0]))
        >>> task.likelihood(torch.tensor([[0.6, 0.2]])).sample().shape
        torch.Size([1, 10])

    References:
        | A Contribution to the Mathematical Theory of Epidemics (Kermack and McKendrick,
        | 1927)

        | Benchmarking Simulation-Based Inference (Lueckmann et al., 2021)
        | https://arxiv.org/abs/2101.04653
    """

    name = sbibm_name = "sir"
    description = (
        "SIR epidemic ODE, log-normal priors on (beta, gamma), binomial counts of the infected at "
        "10 times: the SBI benchmark's SIR task (sbibm's observations and reference draws)"
    )
    prior_loc, prior_scale = (math.log(0.4), math.log(0.125)), (0.5, 0.2)
    population, total_count, interval, steps = 1e6, 1000, 17.0, 68
    observation_shape = (10,)

    def infected(self, theta: Tensor) -> Tensor:
        r""":math:`\log(I(t_k) / N)` given ``theta`` ``[*batch, 2]``, shaped ``[*batch, 10]``."""
        beta, gamma = theta[..., :1], theta[..., 1:]

        def rate(state: Tensor) -> Tensor:
            susceptible, infected = state.exp().split(1, dim=-1)
            return torch.cat((-beta * infected, beta * susceptible - gamma), dim=-1)

        start = theta.new_tensor([math.log1p(-1 / self.population), -math.log(self.population)])
        start = start.expand(theta.shape)
        return solve_ode(rate, start, self.interval, self.num_times, self.steps)[..., 1]

    def likelihood(self, theta: Tensor) -> Distribution:
        log_p = self.infected(theta).clamp(max=-1e-6)
        logits = log_p - torch.log1p(-log_p.exp())
        return dist.Binomial(self.total_count, logits=logits).to_event(1)


class LotkaVolterra(_ODETask):
    r"""The Lotka-Volterra predator-prey task of the simulation-based inference benchmark, as a
    Pyro model.

    Prey :math:`X` and predators :math:`Y` follow

    .. math:: X' = \alpha X - \beta X Y, \quad Y' = -\gamma Y + \delta X Y,

    from :math:`(X, Y)(0) = (30, 1)`. The prior is log-normal, :math:`\log \alpha, \log \gamma
    \sim \mathcal{N}(-0.125, 0.5^2)` and :math:`\log \beta, \log \delta \sim \mathcal{N}(-3,
    0.5^2)`, independent, and the observations are log-normal around the populations at
    :math:`t_k = 2.1 k`, :math:`k = 0, \dots, 9` (sbibm's every 21st point of a 0.1 grid on
    [0, 20]):

    .. math:: \log x_{1,k} \sim \mathcal{N}(\log X(t_k), 0.1^2), \quad \log x_{2,k} \sim
        \mathcal{N}(\log Y(t_k), 0.1^2),

    with the populations clamped to :math:`[10^{-10}, 10^4]` as sbibm does. The observed site
    ``"x"`` is shaped ``[2, 10]`` (prey, then predators; sbibm's 20 numbers in this order).

    The ODE is solved for :math:`(\log X, \log Y)`, whose rates :math:`(\alpha - \beta Y,
    \delta X - \gamma)` are smooth, by :func:`solve_ode` with ``steps`` RK4 steps per 2.1
    time units (default 42, :math:`h = 0.05`; within :math:`10^{-4}` in :math:`\log X,
    \log Y` of a 4-times finer solve at sbibm's observations, against the noise 0.1). The
    likelihood is a product of log-normals, so exact Bayesian methods (NUTS, SMC) apply;
    :meth:`reference_samples` gives sbibm's reference draws.

    Arguments:
        observation: sbibm's observation number, 1 to 10 (its :attr:`truth` and reference
            draws come with it), or 20 positive numbers (``[20]``, ``[1, 20]`` or
            ``[2, 10]``).
        steps: RK4 steps per observation interval.

    Raises:
        ImportError: If an observation number is given and sbibm is not installed.

    Example:
        >>> import torch
        >>> from condgen.evaluate import LotkaVolterra
        >>> task = LotkaVolterra(observation=torch.ones(20))
        >>> task.likelihood(torch.tensor([[0.7, 0.1, 0.9, 0.1]])).sample().shape
        torch.Size([1, 2, 10])

    References:
        | Elements of Physical Biology (Lotka, 1925)

        | Benchmarking Simulation-Based Inference (Lueckmann et al., 2021)
        | https://arxiv.org/abs/2101.04653
    """

    name = sbibm_name = "lotka_volterra"
    description = (
        "Lotka-Volterra predator-prey ODE, log-normal priors on its 4 rates, log-normal noise on "
        "both populations at 10 times: the SBI benchmark's task (sbibm's observations and draws)"
    )
    prior_loc, prior_scale = (-0.125, -3.0, -0.125, -3.0), (0.5,) * 4
    initial, noise, interval, steps = (30.0, 1.0), 0.1, 2.1, 42
    clamp = (1e-10, 1e4)
    observation_shape = (2, 10)

    def populations(self, theta: Tensor) -> Tensor:
        r""":math:`(\log X(t_k), \log Y(t_k))` given ``theta`` ``[*batch, 4]``, shaped
        ``[*batch, 2, 10]``."""
        alpha, beta, gamma, delta = theta[..., None].unbind(-2)

        def rate(state: Tensor) -> Tensor:
            prey, predators = state.exp().split(1, dim=-1)
            return torch.cat((alpha - beta * predators, delta * prey - gamma), dim=-1)

        start = theta.new_tensor(self.initial).log().expand((*theta.shape[:-1], 2))
        state = solve_ode(rate, start, self.interval, self.num_times, self.steps)
        return state.transpose(-1, -2)

    def likelihood(self, theta: Tensor) -> Distribution:
        low, high = (math.log(c) for c in self.clamp)
        loc = self.populations(theta).clamp(low, high)
        return dist.LogNormal(loc, self.noise).to_event(2)
