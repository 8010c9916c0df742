r"""Conditioning tasks whose posterior is known in closed form."""

from __future__ import annotations

__all__ = [
    "BayesianLinearRegression",
    "BetaBinomial",
    "GaussianMixtureInverseProblem",
    "NormalNormal",
    "Task",
]

import abc

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor
from torch.distributions import Distribution

from ..priors.mixture import GaussianMixturePrior


class Task(abc.ABC):
    r"""A Pyro model, an observation and the exact posterior of every latent site.

    Attributes:
        name: A short name for tables.
        data: The observations, by site name (pass them to :func:`condgen.condition`).
    """

    name: str
    data: dict[str, Tensor]

    @abc.abstractmethod
    def model(self) -> None:
        r"""The Pyro model."""

    @abc.abstractmethod
    def posterior(self) -> dict[str, Distribution]:
        r"""The exact posterior of each latent site (the sites are independent a posteriori)."""

    def reference_samples(self, num_samples: int, seed: int = 0) -> dict[str, Tensor]:
        r"""Exact posterior draws, ``[num_samples, *site.shape]`` per site."""
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            return {k: d.sample((num_samples,)) for k, d in self.posterior().items()}
        finally:
            torch.random.set_rng_state(generator_state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


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
    """

    name = "normal-normal"

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


class BetaBinomial(Task):
    r"""A success probability with a constrained support: the conjugate Beta-Binomial model.

    .. math:: p \sim \mathrm{Beta}(a, b), \quad y \mid p \sim \mathrm{Binomial}(n, p),

    with posterior :math:`\mathrm{Beta}(a + y, b + n - y)`.

    Arguments:
        a: Prior concentration :math:`a`.
        b: Prior concentration :math:`b`.
        num_trials: The number of trials :math:`n`.
        successes: The observed number of successes :math:`y`.
    """

    name = "beta-binomial"

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
    """

    name = "linear-regression"

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


class GaussianMixtureInverseProblem(Task):
    r"""A linear inverse problem with a Gaussian-mixture prior: the exact posterior of a
    generative prior.

    .. math:: x \sim \sum_k w_k \mathcal{N}(m_k, C_k), \quad
        y \mid x \sim \mathcal{N}(A x, \sigma^2 I),

    whose posterior is again a mixture, with weights
    :math:`\tilde w_k \propto w_k \mathcal{N}(y; A m_k, A C_k A^\top + \sigma^2 I)` and
    components :math:`\mathcal{N}(\tilde m_k, \tilde C_k)`, :math:`\tilde C_k = (C_k^{-1} +
    A^\top A / \sigma^2)^{-1}`, :math:`\tilde m_k = \tilde C_k (C_k^{-1} m_k + A^\top y /
    \sigma^2)`. The prior is a :class:`~condgen.priors.GaussianMixturePrior`, so guidance
    methods get its exact denoiser at every noise level.

    Arguments:
        prior: The mixture prior; by default 4 components on a circle of radius 3 in
            ``dim`` dimensions (the first two coordinates), each with covariance
            :math:`0.25 I`.
        operator: The matrix :math:`A`, shaped ``[m, d]``; by default the first coordinate
            (``[[1, 0, ...]]``), so the posterior stays multimodal.
        noise: :math:`\sigma`.
        dim: The dimension :math:`d` of the default prior.
        seed: Seed of the simulated observation (drawn from the prior predictive).
    """

    name = "gmm-inverse"

    def __init__(
        self,
        prior: GaussianMixturePrior | None = None,
        operator: Tensor | None = None,
        noise: float = 0.5,
        dim: int = 2,
        seed: int = 0,
    ):
        if prior is None:
            angles = torch.arange(4) * (torch.pi / 2) + torch.pi / 4
            means = torch.zeros(4, dim)
            means[:, 0], means[:, 1] = 3 * angles.cos(), 3 * angles.sin()
            prior = GaussianMixturePrior(
                torch.ones(4), means, 0.25 * torch.eye(dim).repeat(4, 1, 1)
            )
        d = prior.event_shape[0]
        if operator is None:
            operator = torch.eye(1, d)
        if operator.dim() != 2 or operator.shape[1] != d:
            raise ValueError(f"operator must be shaped [m, {d}], got {tuple(operator.shape)}")
        self.prior, self.operator, self.noise = prior, operator.to(prior.means), noise
        generator = _generator(seed)
        x = self._draw(generator)
        y = self.operator @ x + noise * torch.randn(len(operator), generator=generator)
        self.data = {"y": y}

    def _draw(self, generator: torch.Generator) -> Tensor:
        k = torch.multinomial(self.prior.weights, 1, generator=generator).item()
        chol = torch.linalg.cholesky(self.prior.covs[k])
        return self.prior.means[k] + chol @ torch.randn(len(chol), generator=generator)

    def model(self) -> None:
        x = pyro.sample("x", self.prior)
        loc = (self.operator * x.unsqueeze(-2)).sum(-1)
        pyro.sample("y", dist.Normal(loc, self.noise).to_event(1))

    def posterior(self) -> dict[str, Distribution]:
        A, y, s2 = self.operator.double(), self.data["y"].double(), self.noise**2
        means, covs = self.prior.means.double(), self.prior.covs.double()
        precisions = torch.linalg.inv(covs) + A.T @ A / s2
        post_covs = torch.linalg.inv(precisions)
        post_covs = (post_covs + post_covs.mT) / 2
        rhs = (torch.linalg.inv(covs) @ means.unsqueeze(-1)).squeeze(-1) + A.T @ y / s2
        post_means = (post_covs @ rhs.unsqueeze(-1)).squeeze(-1)
        evidence = dist.MultivariateNormal(
            means @ A.T, A @ covs @ A.T + s2 * torch.eye(len(A), dtype=A.dtype)
        ).log_prob(y)
        log_w = self.prior.weights.double().log() + evidence
        dtype = self.prior.means.dtype
        return {
            "x": GaussianMixturePrior(
                log_w.softmax(0).to(dtype),
                post_means.to(dtype),
                post_covs.to(dtype),
                schedule=self.prior.schedule,
            )
        }
