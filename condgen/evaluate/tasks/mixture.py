r"""A linear inverse problem with a Gaussian-mixture prior, whose posterior is again a mixture:
the exact posterior of a generative prior."""

from __future__ import annotations

__all__ = ["GaussianMixtureInverseProblem"]

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor
from torch.distributions import Distribution

from ...priors.mixture import GaussianMixturePrior
from .base import Task, _generator

_CIRCLE = (
    "4-component Gaussian-mixture prior on a circle, y = x[0] + noise: a bimodal posterior "
    "(options dim, noise, seed)"
)


def _mixture_draws(mixture: GaussianMixturePrior, num_samples: int, seed: int) -> Tensor:
    r"""Exact draws of a Gaussian mixture: the components first, then each component's points
    with its own Cholesky factor, in double precision, from a generator of their own.

    No :math:`N \times K \times d \times d` intermediate is built (a mixture distribution
    that draws every component for every point needs 64 GB for :math:`N = 1000`, :math:`K =
    25`, :math:`d = 800`), and the global random state is left alone.

    Returns:
        The draws, shaped ``[num_samples, d]``, in the mixture's dtype, in a random order.
    """
    generator = _generator(seed)
    weights, means, covs = mixture.weights.double(), mixture.means.double(), mixture.covs.double()
    components = torch.multinomial(weights, num_samples, replacement=True, generator=generator)
    draws = torch.empty(num_samples, means.shape[-1], dtype=torch.float64)
    for k in components.unique().tolist():
        index = (components == k).nonzero().squeeze(-1)
        noise = torch.randn(len(index), means.shape[-1], generator=generator, dtype=torch.float64)
        draws[index] = means[k] + noise @ torch.linalg.cholesky(covs[k]).T
    return draws.to(mixture.means.dtype)


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

    By default this is the setting of Cardoso et al. (2023), drawn anew for each seed:

    * 25 components :math:`\mathcal{N}(m_{ij}, I_d)` with means :math:`m_{ij} = (8i, 8j, 8i,
      8j, \dots) \in \mathbb{R}^d`, :math:`i, j \in \{-2, \dots, 2\}`, and weights
      :math:`w_k \propto \epsilon_k^2`, :math:`\epsilon_k \sim \mathcal{N}(0, 1)`;
    * :math:`A \in \mathbb{R}^{d_y \times d}` a standard Gaussian matrix whose singular
      values are replaced by sorted :math:`\mathcal{U}(0, 1)` draws;
    * :math:`\sigma = u \, \|A\|_2`, :math:`u \sim \mathcal{U}(0, 1)`;
    * :math:`y = A x + \sigma n` with :math:`x` drawn from the prior.

    The weights, :math:`A` and :math:`u` are drawn from one generator seeded with ``seed``,
    in that order whatever is given, so giving one of ``prior``, ``operator``, ``noise``
    keeps the others as the seed makes them; the observation comes from a second generator
    seeded with ``seed``. :meth:`circle` builds a small bimodal problem instead.

    Arguments:
        dim: The dimension :math:`d` of the default prior (even); the dimension of ``prior``
            when it is given.
        obs_dim: The number :math:`d_y \le d` of rows of the default operator.
        prior: The mixture prior, in place of the default.
        operator: The matrix :math:`A`, shaped ``[d_y, d]``, in place of the default.
        noise: :math:`\sigma`, in place of the default.
        seed: Seed of the default prior, operator and noise, and of the observation.

    Example:
        >>> from condgen.evaluate import GaussianMixtureInverseProblem
        >>> task = GaussianMixtureInverseProblem(dim=8, obs_dim=2, seed=0)
        >>> task.reference_samples(1000)["x"].shape
        torch.Size([1000, 8])
        >>> GaussianMixtureInverseProblem.circle().data["y"].shape
        torch.Size([1])

    References:
        | Monte Carlo guided Diffusion for Bayesian linear inverse problems (Cardoso et al.,
        | 2023)
        | https://arxiv.org/abs/2308.07983
    """

    name = "gmm"
    description = (
        "25-component Gaussian-mixture prior, y = A x + noise with a random A "
        "(Cardoso et al. 2023; options dim, obs_dim, seed)"
    )
    default_methods = ("nuts", "tds", "dps", "pigdm", "langevin")

    def __init__(
        self,
        dim: int = 8,
        obs_dim: int = 1,
        *,
        prior: GaussianMixturePrior | None = None,
        operator: Tensor | None = None,
        noise: float | None = None,
        seed: int = 0,
    ):
        if prior is None and (dim < 2 or dim % 2):
            raise ValueError(
                f"dim must be even and positive (the means repeat a 2-D grid), got {dim}"
            )
        d = dim if prior is None else prior.event_shape[0]
        if operator is None and not 1 <= obs_dim <= d:
            raise ValueError(f"obs_dim must lie in [1, {d}], got {obs_dim}")
        generator = _generator(seed)
        weights = torch.randn(25, generator=generator) ** 2
        matrix = torch.randn(obs_dim, d, generator=generator)
        u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
        singular = torch.rand(obs_dim, generator=generator).sort(descending=True).values
        level = torch.rand((), generator=generator)
        if prior is None:
            grid = 8.0 * torch.arange(-2, 3, dtype=torch.float32)
            means = torch.cartesian_prod(grid, grid).repeat(1, d // 2)
            prior = GaussianMixturePrior(weights, means, torch.eye(d).repeat(len(means), 1, 1))
        if operator is None:
            operator, largest = u @ torch.diag(singular) @ vh, singular.max()
        else:
            operator = torch.as_tensor(operator).to(prior.means)
            if operator.dim() != 2 or operator.shape[1] != d:
                raise ValueError(f"operator must be shaped [m, {d}], got {tuple(operator.shape)}")
            largest = torch.linalg.matrix_norm(operator.double(), ord=2)
        if noise is None:
            noise = float(level * largest)
        if not noise > 0:
            raise ValueError(f"noise must be positive, got {noise}")
        self.prior, self.operator, self.noise = prior, operator.to(prior.means), noise
        generator = _generator(seed)
        x = self._draw(generator)
        y = self.operator @ x + noise * torch.randn(len(operator), generator=generator)
        self.data = {"y": y}

    @classmethod
    def circle(
        cls, dim: int = 2, noise: float = 0.5, seed: int = 0, *, operator: Tensor | None = None
    ) -> GaussianMixtureInverseProblem:
        r"""A small bimodal problem: 4 components :math:`\mathcal{N}(m_k, 0.25 I_d)` of equal
        weight, with means on a circle of radius 3 in the first two coordinates,
        :math:`m_k = 3 (\cos \phi_k, \sin \phi_k, 0, \dots)`, :math:`\phi_k = \pi/4 + k
        \pi/2`, observed through the first coordinate (:math:`A = [1, 0, \dots, 0]`), so that
        two modes of equal weight remain.

        Arguments:
            dim: The dimension :math:`d \ge 2`.
            noise: :math:`\sigma`.
            seed: Seed of the observation.
            operator: The matrix :math:`A`, shaped ``[m, d]``, in place of the first coordinate.

        Returns:
            The task, named ``"gmm-circle"``.
        """
        if dim < 2:
            raise ValueError(f"dim must be at least 2, got {dim}")
        angles = torch.arange(4) * (torch.pi / 2) + torch.pi / 4
        means = torch.zeros(4, dim)
        means[:, 0], means[:, 1] = 3 * angles.cos(), 3 * angles.sin()
        prior = GaussianMixturePrior(torch.ones(4), means, 0.25 * torch.eye(dim).repeat(4, 1, 1))
        operator = torch.eye(1, dim) if operator is None else operator
        task = cls(prior=prior, operator=operator, noise=noise, seed=seed)
        task.name = "gmm-circle"
        task.description = _CIRCLE
        return task

    def _draw(self, generator: torch.Generator) -> Tensor:
        k = torch.multinomial(self.prior.weights, 1, generator=generator).item()
        chol = torch.linalg.cholesky(self.prior.covs[k])
        return self.prior.means[k] + chol @ torch.randn(len(chol), generator=generator)

    def model(self) -> None:
        x = pyro.sample("x", self.prior)
        loc = (self.operator * x.unsqueeze(-2)).sum(-1)
        pyro.sample("y", dist.Normal(loc, self.noise).to_event(1))

    def _log_component_evidence(self) -> Tensor:
        r""":math:`\log w_k + \log \mathcal{N}(y; A m_k, A C_k A^\top + \sigma^2 I)`, float64."""
        A, y, s2 = self.operator.double(), self.data["y"].double(), self.noise**2
        means, covs = self.prior.means.double(), self.prior.covs.double()
        evidence = dist.MultivariateNormal(
            means @ A.T, A @ covs @ A.T + s2 * torch.eye(len(A), dtype=A.dtype)
        ).log_prob(y)
        weights = self.prior.weights.double()
        return (weights / weights.sum()).log() + evidence

    def log_evidence(self) -> float:
        r""":math:`\log p(y) = \log \sum_k w_k \mathcal{N}(y; A m_k, A C_k A^\top + \sigma^2
        I)`."""
        return float(self._log_component_evidence().logsumexp(0))

    def posterior(self) -> dict[str, Distribution]:
        A, y, s2 = self.operator.double(), self.data["y"].double(), self.noise**2
        means, covs = self.prior.means.double(), self.prior.covs.double()
        precisions = torch.linalg.inv(covs) + A.T @ A / s2
        post_covs = torch.linalg.inv(precisions)
        post_covs = (post_covs + post_covs.mT) / 2
        rhs = (torch.linalg.inv(covs) @ means.unsqueeze(-1)).squeeze(-1) + A.T @ y / s2
        post_means = (post_covs @ rhs.unsqueeze(-1)).squeeze(-1)
        log_w = self._log_component_evidence()
        dtype = self.prior.means.dtype
        return {
            "x": GaussianMixturePrior(
                log_w.softmax(0).to(dtype),
                post_means.to(dtype),
                post_covs.to(dtype),
                schedule=self.prior.schedule,
            )
        }

    def reference_samples(self, num_samples: int, seed: int = 0) -> dict[str, Tensor]:
        r"""Exact posterior draws, ``{"x": [num_samples, d]}``, component by component (no
        :math:`N K d^2` intermediate; the global random state is left alone)."""
        return {"x": _mixture_draws(self.posterior()["x"], num_samples, seed)}

    def __repr__(self) -> str:
        d, m = self.operator.shape[1], self.operator.shape[0]
        k = len(self.prior.weights)
        return f"{type(self).__name__}(d={d}, d_y={m}, K={k}, noise={self.noise:.3g})"
