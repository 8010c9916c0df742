r"""Conjugate models whose posterior is known in closed form: a normal mean, a success
probability and the coefficients of a linear regression."""

from __future__ import annotations

__all__ = ["BayesianLinearRegression", "BetaBinomial", "NormalNormal"]

import math

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import Distribution

from .base import Task, _generator


class NormalNormal(Task):
    r"""A normal mean with known noise: the conjugate Normal-Normal model.

    .. math:: x \sim \mathcal{N}(\mu_0, \tau^2 I_d), \quad
        y_i \mid x \sim \mathcal{N}(x, \sigma^2 I_d), \quad i = 1, \dots, n,

    with posterior :math:`\mathcal{N}(m, v I_d)`, :math:`v = (1/\tau^2 + n/\sigma^2)^{-1}`,
    :math:`m = v (\mu_0/\tau^2 + \sum_i y_i/\sigma^2)`.

    Arguments:
        dim: The dimension :math:`d`.
        num_obs: The number :math:`n` of observations.
        prior_loc: :math:`\mu_0`.
        prior_scale: :math:`\tau`.
        noise: :math:`\sigma`.
        seed: Seed of the simulated observations.

    Example:
        >>> from condgen.evaluate import NormalNormal
        >>> task = NormalNormal(dim=2)
        >>> task.reference_samples(1000)["x"].shape
        torch.Size([1000, 2])
    """

    name = "normal-normal"
    description = "a normal mean with known noise (conjugate Normal-Normal)"

    def __init__(
        self,
        dim: int = 2,
        num_obs: int = 10,
        prior_loc: float = 0.0,
        prior_scale: float = 2.0,
        noise: float = 1.0,
        seed: int = 0,
    ):
        self.dim, self.prior_loc, self.prior_scale, self.noise = dim, prior_loc, prior_scale, noise
        truth = prior_loc + prior_scale * torch.randn(dim, generator=_generator(seed))
        noise_draws = torch.randn(num_obs, dim, generator=_generator(seed + 1))
        self.data = {"y": truth + noise * noise_draws}

    def model(self) -> None:
        prior = dist.Normal(self.prior_loc, self.prior_scale).expand([self.dim]).to_event(1)
        x = pyro.sample("x", prior)
        with pyro.plate("obs", len(self.data["y"])):
            pyro.sample("y", dist.Normal(x, self.noise).to_event(1))

    def posterior(self) -> dict[str, Distribution]:
        y = self.data["y"]
        var = 1 / (1 / self.prior_scale**2 + len(y) / self.noise**2)
        mean = var * (self.prior_loc / self.prior_scale**2 + y.sum(0) / self.noise**2)
        return {"x": dist.Normal(mean, var**0.5).to_event(1)}

    def log_evidence(self) -> float:
        r"""Per coordinate, :math:`(y_1, \dots, y_n) \sim \mathcal{N}(\mu_0 \mathbf 1,
        \sigma^2 I + \tau^2 \mathbf 1 \mathbf 1^\top)`."""
        y = self.data["y"].double().T  # [d, n]
        n = y.shape[1]
        cov = self.noise**2 * torch.eye(n, dtype=y.dtype) + self.prior_scale**2
        mean = torch.full((n,), float(self.prior_loc), dtype=y.dtype)
        return float(dist.MultivariateNormal(mean, cov).log_prob(y).sum())


class BetaBinomial(Task):
    r"""A success probability with a constrained support: the conjugate Beta-Binomial model.

    .. math:: p \sim \mathrm{Beta}(a, b), \quad y \mid p \sim \mathrm{Binomial}(n, p),

    with posterior :math:`\mathrm{Beta}(a + y, b + n - y)`.

    Arguments:
        a: Prior concentration :math:`a`.
        b: Prior concentration :math:`b`.
        num_trials: The number of trials :math:`n`.
        successes: The observed number of successes :math:`y`.

    Example:
        >>> from condgen.evaluate import BetaBinomial
        >>> BetaBinomial(successes=3).posterior()["p"].mean
        tensor(0.2083)
    """

    name = "beta-binomial"
    description = "a success probability in (0, 1) (conjugate Beta-Binomial)"

    def __init__(self, a: float = 2.0, b: float = 2.0, num_trials: int = 20, successes: int = 3):
        if not 0 <= successes <= num_trials:
            raise ValueError("successes must lie in [0, num_trials]")
        self.a, self.b, self.num_trials = a, b, num_trials
        self.data = {"y": torch.tensor(float(successes))}

    def model(self) -> None:
        p = pyro.sample("p", dist.Beta(self.a, self.b))
        pyro.sample("y", dist.Binomial(self.num_trials, p))

    def posterior(self) -> dict[str, Distribution]:
        y = self.data["y"]
        return {"p": dist.Beta(self.a + y, self.b + self.num_trials - y)}

    def log_evidence(self) -> float:
        r"""The beta-binomial probability :math:`\binom{n}{y} B(a + y, b + n - y) / B(a, b)`."""
        y, n, a, b = float(self.data["y"]), self.num_trials, self.a, self.b
        lgamma = math.lgamma
        log_choose = lgamma(n + 1) - lgamma(y + 1) - lgamma(n - y + 1)
        log_beta = lgamma(a + y) + lgamma(b + n - y) - lgamma(a + b + n)
        return log_choose + log_beta - (lgamma(a) + lgamma(b) - lgamma(a + b))


class BayesianLinearRegression(Task):
    r"""Bayesian linear regression with known noise.

    .. math:: w \sim \mathcal{N}(0, s^2 I_d), \quad y_i \mid w \sim
        \mathcal{N}(x_i^\top w, \sigma^2), \quad i = 1, \dots, n,

    with posterior :math:`\mathcal{N}(\mu, \Sigma)`, :math:`\Sigma = (I/s^2 + X^\top
    X/\sigma^2)^{-1}`, :math:`\mu = \Sigma X^\top y / \sigma^2`.

    Arguments:
        dim: The number :math:`d` of coefficients.
        num_obs: The number :math:`n` of observations.
        prior_scale: :math:`s`.
        noise: :math:`\sigma`.
        seed: Seed of the simulated design and observations.

    Example:
        >>> from condgen.evaluate import BayesianLinearRegression
        >>> task = BayesianLinearRegression(dim=3)
        >>> task.posterior()["w"].covariance_matrix.shape
        torch.Size([3, 3])
    """

    name = "linear-regression"
    description = "Bayesian linear regression with known noise (Gaussian posterior)"

    def __init__(
        self,
        dim: int = 3,
        num_obs: int = 20,
        prior_scale: float = 1.0,
        noise: float = 0.5,
        seed: int = 0,
    ):
        self.prior_scale, self.noise = prior_scale, noise
        self.features = torch.randn(num_obs, dim, generator=_generator(seed))
        weights = prior_scale * torch.randn(dim, generator=_generator(seed + 1))
        noise_draws = noise * torch.randn(num_obs, generator=_generator(seed + 2))
        self.data = {"y": self.features @ weights + noise_draws}

    def model(self) -> None:
        dim = self.features.shape[1]
        w = pyro.sample("w", dist.Normal(0.0, self.prior_scale).expand([dim]).to_event(1))
        with pyro.plate("obs", len(self.features)):
            pyro.sample("y", dist.Normal((self.features * w).sum(-1), self.noise))

    def posterior(self) -> dict[str, Distribution]:
        X, y = self.features.double(), self.data["y"].double()
        precision = torch.eye(X.shape[1], dtype=X.dtype) / self.prior_scale**2
        precision = precision + X.T @ X / self.noise**2
        cov = torch.linalg.inv(precision)
        mean = cov @ X.T @ y / self.noise**2
        cov = (cov + cov.T) / 2
        return {"w": dist.MultivariateNormal(mean.float(), covariance_matrix=cov.float())}

    def log_evidence(self) -> float:
        r""":math:`y \sim \mathcal{N}(0, s^2 X X^\top + \sigma^2 I)`."""
        X, y = self.features.double(), self.data["y"].double()
        cov = self.prior_scale**2 * X @ X.T + self.noise**2 * torch.eye(len(y), dtype=y.dtype)
        return float(dist.MultivariateNormal(torch.zeros_like(y), cov).log_prob(y))
