r"""Low-dimensional posteriors of hard shapes, with exact samplers: two modes, a banana, a
funnel and an X, for testing guides against the truth."""

from __future__ import annotations

__all__ = ["Banana", "Funnel", "TargetDensity", "TwoModes", "grid_draws", "inverse_cdf_draws"]

import math
from collections.abc import Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from .tasks import Task, _generator, register_task

LogDensity = Callable[[Tensor], Tensor]


def inverse_cdf_draws(
    log_density: LogDensity,
    low: float,
    high: float,
    num_samples: int,
    generator: torch.Generator,
    points: int = 200_001,
) -> Tensor:
    r"""Exact draws (up to the grid's resolution) from a 1-D unnormalised density by inverting
    its CDF on a fine grid, with linear interpolation between grid points.

    With 200,001 points the discretisation error is far below the Monte Carlo error of any
    sample size used here, provided ``[low, high]`` holds all but a negligible mass.

    Arguments:
        log_density: The unnormalised log-density, applied to a float64 grid.
        low, high: The interval.
        num_samples: The number of draws.
        generator: The random generator.
        points: The number of grid points.

    Returns:
        The draws, float64, shaped ``[num_samples]``.
    """
    grid = torch.linspace(low, high, points, dtype=torch.float64)
    values = log_density(grid)
    cdf = torch.cumsum((values - values.max()).exp(), 0)
    cdf = cdf / cdf[-1]
    u = torch.rand(num_samples, generator=generator, dtype=torch.float64)
    i = torch.searchsorted(cdf, u).clamp(1, points - 1)
    w = ((u - cdf[i - 1]) / (cdf[i] - cdf[i - 1]).clamp_min(1e-300)).clamp(0, 1)
    return grid[i - 1] + w * (grid[i] - grid[i - 1])


def grid_draws(
    log_density: LogDensity,
    num_samples: int,
    generator: torch.Generator,
    half: float = 7.0,
    size: int = 1201,
) -> Tensor:
    r"""Draws from a 2-D unnormalised density on the square :math:`[-h, h]^2`: a grid cell
    drawn with probability proportional to the density at its centre, then a uniform point in
    the cell (the error is of the order of the cell's width, :math:`2h / (n - 1)`).

    Returns:
        The draws, float64, shaped ``[num_samples, 2]``.
    """
    axis = torch.linspace(-half, half, size, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    log_p = log_density(grid)
    cells = torch.multinomial((log_p - log_p.max()).exp(), num_samples, True, generator=generator)
    step = axis[1] - axis[0]
    jitter = (torch.rand(num_samples, 2, generator=generator, dtype=torch.float64) - 0.5) * step
    return grid[cells] + jitter


def _normal_given(y_over_var: Tensor, precision: Tensor, generator: torch.Generator) -> Tensor:
    r"""Draws of a Gaussian given its precision and precision-weighted mean."""
    noise = torch.randn(precision.shape, generator=generator, dtype=torch.float64)
    return y_over_var / precision + noise / precision.sqrt()


@register_task("two-modes")
class TwoModes(Task):
    r"""A posterior with two separated modes:

    .. math:: \theta \sim \mathcal{N}(0, 9 I_2), \quad y \sim \mathcal{N}\big((\theta_1^2,
        \theta_2), s^2 I\big),

    observed at :math:`y = (4, 0)`, where :math:`\theta_1 = \pm 2` carry equal mass.

    Exact sampler: :math:`\theta_1` and :math:`\theta_2` are independent a posteriori;
    :math:`\theta_1` is drawn by :func:`inverse_cdf_draws` from :math:`\mathcal{N}(\theta_1;
    0, 9) \, \mathcal{N}(y_1; \theta_1^2, s^2)`, and :math:`\theta_2` from its conjugate
    normal posterior.

    Arguments:
        observation: :math:`y`.
        noise: :math:`s`.
    """

    name = "two-modes"
    description = "theta ~ N(0, 9 I), y ~ N((theta_1^2, theta_2), 0.5^2 I) at (4, 0): two modes"
    default_methods = ("svi", "importance", "nuts")

    def __init__(self, observation: Sequence[float] = (4.0, 0.0), noise: float = 0.5):
        self.noise = noise
        self.data = {"y": torch.as_tensor(observation, dtype=torch.get_default_dtype())}

    def model(self) -> None:
        theta = pyro.sample("theta", dist.Normal(0.0, 3.0).expand([2]).to_event(1))
        loc = torch.stack([theta[..., 0] ** 2, theta[..., 1]], -1)
        pyro.sample("y", dist.Normal(loc, self.noise).to_event(1), obs=self.data["y"])

    def reference_samples(self, num_samples: int, seed: int = 0) -> dict[str, Tensor]:
        generator = _generator(seed)
        y1, y2 = self.data["y"].double()
        var = self.noise**2
        reach = math.sqrt(max(float(y1), 0.0)) + 4.0
        theta_1 = inverse_cdf_draws(
            lambda a: -(a**2) / 18 - (y1 - a**2) ** 2 / (2 * var),
            -reach,
            reach,
            num_samples,
            generator,
        )
        precision = torch.full((num_samples,), 1 / 9 + 1 / var, dtype=torch.float64)
        theta_2 = _normal_given(y2 / var, precision, generator)
        theta = torch.stack([theta_1, theta_2], -1)
        return {"theta": theta.to(torch.get_default_dtype())}


@register_task("banana")
class Banana(Task):
    r"""A banana-shaped posterior, or several independent ones:

    .. math:: z \sim \mathcal{N}(0, I_{2K}), \quad y_k \sim \mathcal{N}(z_{2k+1} - z_{2k}^2,
        s^2), \quad k = 0, \dots, K - 1,

    observed at :math:`y = 1` (:math:`K = 1`, a scalar observation) by default.

    Exact sampler, pair by pair: :math:`y_k \mid z_{2k} \sim \mathcal{N}(-z_{2k}^2, 1 + s^2)`
    gives the marginal posterior of :math:`z_{2k}`, drawn by :func:`inverse_cdf_draws`;
    :math:`z_{2k+1} \mid z_{2k}, y_k` is Gaussian.

    Arguments:
        observation: :math:`y`: a number, or :math:`K` numbers for :math:`K` bananas.
        noise: :math:`s`.
    """

    name = "banana"
    description = "z ~ N(0, I_2), y ~ N(z_2 - z_1^2, 0.3^2) at 1: a banana (or several)"

    def __init__(self, observation: float | Sequence[float] = 1.0, noise: float = 0.3):
        self.noise = noise
        self.data = {"y": torch.as_tensor(observation, dtype=torch.get_default_dtype())}
        if self.data["y"].dim() > 1:
            raise ValueError(f"observation must be a number or a vector, got {observation!r}")

    def model(self) -> None:
        y = self.data["y"]
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2 * y.numel()]).to_event(1))
        curve = (z[..., 1::2] - z[..., 0::2] ** 2).reshape(z.shape[:-1] + y.shape)
        pyro.sample("y", dist.Normal(curve, self.noise).to_event(y.dim()), obs=y)

    def reference_samples(self, num_samples: int, seed: int = 0) -> dict[str, Tensor]:
        generator = _generator(seed)
        var = self.noise**2
        columns = []
        for y in self.data["y"].double().reshape(-1).tolist():

            def log_marginal(a: Tensor, y: float = y) -> Tensor:
                return -(a**2) / 2 - (y + a**2) ** 2 / (2 * (1 + var))

            z1 = inverse_cdf_draws(log_marginal, -6, 6, num_samples, generator)
            precision = torch.full_like(z1, 1 + 1 / var)
            columns += [z1, _normal_given((y + z1**2) / var, precision, generator)]
        return {"z": torch.stack(columns, -1).to(torch.get_default_dtype())}


@register_task("funnel")
class Funnel(Task):
    r"""A funnel-shaped posterior (Neal's funnel, observed through noise):

    .. math:: v \sim \mathcal{N}(0, 1.5^2), \quad x \sim \mathcal{N}(0, e^{2v}), \quad
        y \sim \mathcal{N}(x, s^2),

    observed at :math:`y = 0.3`.

    Exact sampler: :math:`y \mid v \sim \mathcal{N}(0, e^{2v} + s^2)` gives the marginal
    posterior of :math:`v`, drawn by :func:`inverse_cdf_draws`; :math:`x \mid v, y` is
    Gaussian.

    Arguments:
        observation: :math:`y`.
        noise: :math:`s`.
    """

    name = "funnel"
    description = "v ~ N(0, 1.5^2), x ~ N(0, exp(v)^2), y ~ N(x, 0.5^2) at 0.3: a funnel"

    def __init__(self, observation: float = 0.3, noise: float = 0.5):
        self.noise = noise
        self.data = {"y": torch.tensor(float(observation))}

    def model(self) -> None:
        v = pyro.sample("v", dist.Normal(0.0, 1.5))
        x = pyro.sample("x", dist.Normal(0.0, v.exp()))
        pyro.sample("y", dist.Normal(x, self.noise), obs=self.data["y"])

    def reference_samples(self, num_samples: int, seed: int = 0) -> dict[str, Tensor]:
        generator = _generator(seed)
        y, var = float(self.data["y"]), self.noise**2

        def log_marginal(v: Tensor) -> Tensor:
            total = (2 * v).exp() + var
            return -(v**2) / (2 * 1.5**2) - 0.5 * total.log() - y**2 / (2 * total)

        v = inverse_cdf_draws(log_marginal, -12, 10, num_samples, generator)
        x = _normal_given(torch.full_like(v, y / var), (-2 * v).exp() + 1 / var, generator)
        dtype = torch.get_default_dtype()
        return {"v": v.to(dtype), "x": x.to(dtype)}


def _banana_density(theta: Tensor) -> Tensor:
    bend = dist.Normal(theta[..., 0] ** 2 / 2 - 1, 0.5).log_prob(theta[..., 1])
    return dist.Normal(0.0, 1.0).log_prob(theta[..., 0]) + bend


def _x_density(theta: Tensor) -> Tensor:
    covariances = torch.tensor([[[2.0, 1.8], [1.8, 2.0]], [[2.0, -1.8], [-1.8, 2.0]]])
    components = dist.MultivariateNormal(torch.zeros(2), covariances.to(theta))
    return torch.logsumexp(components.log_prob(theta.unsqueeze(-2)), -1) - math.log(2)


_BANANA_DENSITY = "theta ~ N(0, 9 I_2) times a banana density"
_X_SHAPED = "theta ~ N(0, 9 I_2) times two crossed Gaussians: an X"


class TargetDensity(Task):
    r"""A 2-D target given by its density: a broad prior times a factor,

    .. math:: \theta \sim \mathcal{N}(0, 9 I_2), \quad \text{factor}\ f(\theta),

    so that the posterior is :math:`\propto \mathcal{N}(\theta; 0, 9 I) \, e^{f(\theta)}`; the
    model observes nothing (``data = {}``). Exact sampler: :func:`grid_draws` on
    :math:`[-7, 7]^2`.

    Arguments:
        log_density: :math:`f`, on ``[..., 2]`` tensors.
        name: The task's name.
        description: One line for listings.

    Example:
        >>> from condgen.evaluate import TargetDensity
        >>> task = TargetDensity.x_shaped()
        >>> draws = task.reference_samples(2000)["theta"]
        >>> draws.shape
        torch.Size([2000, 2])
    """

    def __init__(self, log_density: LogDensity, name: str, description: str = ""):
        self.log_density, self.name, self.description = log_density, name, description
        self.data = {}

    @classmethod
    def banana(cls) -> TargetDensity:
        r"""The banana :math:`f(\theta) = \log \mathcal{N}(\theta_1; 0, 1) + \log
        \mathcal{N}(\theta_2; \theta_1^2 / 2 - 1, 0.5^2)`."""
        return cls(_banana_density, "banana-density", _BANANA_DENSITY)

    @classmethod
    def x_shaped(cls) -> TargetDensity:
        r"""The X: an equal mixture of two centred Gaussians of variance 2 and correlations
        :math:`\pm 0.9`."""
        return cls(_x_density, "x-shaped", _X_SHAPED)

    def model(self) -> None:
        theta = pyro.sample("theta", dist.Normal(0.0, 3.0).expand([2]).to_event(1))
        pyro.factor("target", self.log_density(theta))

    def reference_samples(self, num_samples: int, seed: int = 0) -> dict[str, Tensor]:
        def log_posterior(theta: Tensor) -> Tensor:
            return dist.Normal(0.0, 3.0).log_prob(theta).sum(-1) + self.log_density(theta)

        theta = grid_draws(log_posterior, num_samples, _generator(seed))
        return {"theta": theta.to(torch.get_default_dtype())}

    def __repr__(self) -> str:
        return f"TargetDensity({self.name!r})"


register_task("banana-density", TargetDensity.banana, description=_BANANA_DENSITY)
register_task("x-shaped", TargetDensity.x_shaped, description=_X_SHAPED)
