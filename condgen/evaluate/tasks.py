r"""Conditioning tasks with a known posterior, and a registry of them by name."""

from __future__ import annotations

__all__ = [
    "TASKS",
    "BayesianLinearRegression",
    "BetaBinomial",
    "GaussianLinear",
    "GaussianMixtureInverseProblem",
    "NormalNormal",
    "Task",
    "TwoMoons",
    "TwoMoonsLikelihood",
    "available_tasks",
    "get_task",
    "register_task",
]

import abc
import importlib
import inspect
import math
from collections.abc import Callable, Mapping, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution
from torch import Tensor
from torch.distributions import Distribution, constraints

from ..priors.mixture import GaussianMixturePrior
from ..problem import Problem


class Task(abc.ABC):
    r"""A Pyro model, an observation and reference draws of its posterior.

    A task with ``exact = True`` gives exact posterior draws: by default from
    :meth:`posterior`, the closed-form posterior of each latent site, or from its own exact
    sampler (an override of :meth:`reference_samples`). A task with ``exact = False`` has no
    exact sampler: it overrides :meth:`reference_samples` with an approximate long run and
    need not implement :meth:`posterior`.

    Attributes:
        name: A short name for tables (the task's name in :data:`TASKS`).
        description: One line for listings (``condgen tasks``).
        exact: Whether :meth:`reference_samples` draws the posterior exactly.
        default_methods: The names of :func:`condgen.methods.available` that apply to the
            task (``condgen compare`` runs them when no method is named).
        data: The observations, by site name (pass them to :func:`condgen.condition`).
    """

    name: str
    description: str = ""
    exact: bool = True
    default_methods: tuple[str, ...] = ("nuts", "svi", "importance")
    data: dict[str, Tensor]

    @abc.abstractmethod
    def model(self) -> None:
        r"""The Pyro model."""

    def posterior(self) -> dict[str, Distribution]:
        r"""The exact posterior of each latent site (the sites are independent a posteriori).

        Raises:
            NotImplementedError: If the task has no closed-form posterior distribution; its
                :meth:`reference_samples` then gives the reference draws.
        """
        kind = "exact" if self.exact else "approximate"
        raise NotImplementedError(
            f"{type(self).__name__} has no closed-form posterior distribution: use "
            f"reference_samples() for its {kind} posterior draws, and log_joint() for its "
            "unnormalised log posterior"
        )

    def reference_samples(self, num_samples: int, seed: int = 0) -> dict[str, Tensor]:
        r"""Posterior draws, ``[num_samples, *site.shape]`` per site: exact when
        :attr:`exact` is true. The global random state is left as it was."""
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            return {k: d.sample((num_samples,)) for k, d in self.posterior().items()}
        finally:
            torch.random.set_rng_state(generator_state)

    def log_joint(self, values: Mapping[str, Tensor]) -> Tensor:
        r"""The unnormalised log posterior :math:`\log p(z, y) = \log p(z) + \log p(y \mid
        z)` of the model at the observation, for a batch of latent values.

        Arguments:
            values: Latent values by site name, each shaped ``[num_particles, *site.shape]``
                and inside the prior's support.

        Returns:
            The log-joint density, shaped ``[num_particles]``.
        """
        return Problem(self.model, self.data).log_joint(values)

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


class GaussianLinear(Task):
    r"""The Gaussian linear task of the simulation-based inference benchmark.

    .. math:: \theta \sim \mathcal{N}(0, s^2 I_d), \quad x \mid \theta \sim
        \mathcal{N}(\theta, \sigma^2 I_d),

    with posterior :math:`\mathcal{N}(\mu, v I_d)`, :math:`v = (1/s^2 + 1/\sigma^2)^{-1} =
    s^2 \sigma^2 / (s^2 + \sigma^2)`, :math:`\mu = v x / \sigma^2 = s^2 x / (s^2 +
    \sigma^2)`. The observation :math:`x_o` is simulated from a parameter drawn from the
    prior. The defaults are the benchmark's: :math:`d = 10`, :math:`s = \sigma = 0.1`.

    Arguments:
        dim: The dimension :math:`d`.
        prior_scale: :math:`s`.
        noise: :math:`\sigma`.
        seed: Seed of the simulated parameter and observation.

    Example:
        >>> from condgen.evaluate import GaussianLinear
        >>> task = GaussianLinear()
        >>> task.posterior()["theta"].mean.shape
        torch.Size([10])

    References:
        | Benchmarking Simulation-Based Inference (Lueckmann et al., 2021)
        | https://arxiv.org/abs/2101.04653
    """

    name = "gaussian-linear"
    description = (
        "theta ~ N(0, s^2 I), x ~ N(theta, sigma^2 I): the SBI benchmark's Gaussian linear task"
    )

    def __init__(self, dim: int = 10, prior_scale: float = 0.1, noise: float = 0.1, seed: int = 0):
        if dim < 1 or not (prior_scale > 0 and noise > 0):
            raise ValueError("dim must be positive, and prior_scale and noise positive")
        self.dim, self.prior_scale, self.noise = dim, prior_scale, noise
        generator = _generator(seed)
        self.truth = prior_scale * torch.randn(dim, generator=generator)
        self.data = {"x": self.truth + noise * torch.randn(dim, generator=generator)}

    def model(self) -> None:
        prior = dist.Normal(0.0, self.prior_scale).expand([self.dim]).to_event(1)
        theta = pyro.sample("theta", prior)
        pyro.sample("x", dist.Normal(theta, self.noise).to_event(1))

    def posterior(self) -> dict[str, Distribution]:
        var = 1 / (1 / self.prior_scale**2 + 1 / self.noise**2)
        mean = var * self.data["x"] / self.noise**2
        return {"theta": dist.Normal(mean, torch.full_like(mean, var**0.5)).to_event(1)}


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

    def reference_samples(self, num_samples: int, seed: int = 0) -> dict[str, Tensor]:
        r"""Exact posterior draws, ``{"x": [num_samples, d]}``, component by component (no
        :math:`N K d^2` intermediate; the global random state is left alone)."""
        return {"x": _mixture_draws(self.posterior()["x"], num_samples, seed)}

    def __repr__(self) -> str:
        d, m = self.operator.shape[1], self.operator.shape[0]
        k = len(self.prior.weights)
        return f"{type(self).__name__}(d={d}, d_y={m}, K={k}, noise={self.noise:.3g})"


_CIRCLE = (
    "4-component Gaussian-mixture prior on a circle, y = x[0] + noise: a bimodal posterior "
    "(options dim, noise, seed)"
)


def _moons_shift(theta: Tensor) -> Tensor:
    r"""The shift :math:`(-|\theta_1 + \theta_2| / \sqrt 2, (\theta_2 - \theta_1) / \sqrt 2)`
    of the two-moons simulator, shaped like ``theta``."""
    u = (theta[..., 0] + theta[..., 1]) / math.sqrt(2)
    v = (theta[..., 1] - theta[..., 0]) / math.sqrt(2)
    return torch.stack((-u.abs(), v), dim=-1)


def _moons_noise(
    shape: torch.Size, like: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    r"""The point :math:`q = (r \cos a, r \sin a)` of the two-moons simulator, from
    :math:`a \sim \mathcal{U}(-\pi/2, \pi/2)` and :math:`r \sim \mathcal{N}(0.1, 0.01^2)`:
    its two coordinates, each shaped ``shape``."""
    options = {"dtype": like.dtype, "device": like.device, "generator": generator}
    a = torch.pi * (torch.rand(shape, **options) - 0.5)
    r = TwoMoonsLikelihood.radius + TwoMoonsLikelihood.radius_sd * torch.randn(shape, **options)
    return r * a.cos(), r * a.sin()


class TwoMoonsLikelihood(TorchDistribution):
    r"""The two-moons simulator as a distribution with a closed-form density.

    Given :math:`\theta \in \mathbb{R}^2`, draw :math:`a \sim \mathcal{U}(-\pi/2, \pi/2)`,
    :math:`r \sim \mathcal{N}(0.1, 0.01^2)` and return

    .. math:: x = \underbrace{(r \cos a + 0.25, \; r \sin a)}_{p} + \Big(
        -\frac{|\theta_1 + \theta_2|}{\sqrt 2}, \; \frac{-\theta_1 + \theta_2}{\sqrt 2} \Big).

    Density. With :math:`c(\theta)` the shift above, :math:`q = x - c(\theta) - (0.25, 0) =
    (r \cos a, r \sin a)`. The map :math:`(r, a) \mapsto q` from :math:`(\mathbb{R}
    \setminus \{0\}) \times (-\pi/2, \pi/2)` onto the plane without the line :math:`q_1 = 0`
    is one-to-one, with inverse :math:`r = \mathrm{sign}(q_1) \|q\|`, :math:`a =
    \arctan(q_2 / q_1)`, and Jacobian :math:`|\det \partial q / \partial(r, a)| = |r|`. Since
    :math:`a` is uniform with density :math:`1/\pi`,

    .. math:: p(x \mid \theta) = \frac{\mathcal{N}(\mathrm{sign}(q_1) \|q\|; 0.1, 0.01^2)}
        {\pi \|q\|}.

    In the right half plane :math:`q_1 > 0` this is :math:`\mathcal{N}(\|q\|; 0.1, 0.01^2) /
    (\pi \|q\|)`, the usual form; the left half plane holds the draws with :math:`r < 0`,
    of probability :math:`\Phi(-10) \approx 7.6 \times 10^{-24}`, kept so that the density
    is exact for the simulator as written and finite everywhere (gradient-based methods
    prefer a steep slope to :math:`-\infty`). The density is smooth but for a jump across
    :math:`q_1 = 0` and an integrable :math:`1 / \|q\|` peak (of height
    :math:`e^{-50}`) at :math:`q = 0`.

    Arguments:
        theta: The parameters, shaped ``[*batch, 2]``.

    Example:
        >>> import torch
        >>> from condgen.evaluate import TwoMoonsLikelihood
        >>> likelihood = TwoMoonsLikelihood(torch.zeros(4, 2))
        >>> x = likelihood.sample((100,))
        >>> x.shape, likelihood.log_prob(x).shape
        (torch.Size([100, 4, 2]), torch.Size([100, 4]))

    References:
        | Automatic Posterior Transformation for Likelihood-Free Inference (Greenberg et al.,
        | 2019)
        | https://arxiv.org/abs/1905.07488
    """

    arg_constraints = {"theta": constraints.real_vector}  # noqa: RUF012 - torch API
    support = constraints.real_vector
    has_rsample = True
    radius, radius_sd, offset = 0.1, 0.01, 0.25

    def __init__(self, theta: Tensor, validate_args: bool | None = None):
        theta = torch.as_tensor(theta)
        if theta.dim() < 1 or theta.shape[-1] != 2:
            raise ValueError(f"theta must be shaped [*batch, 2], got {tuple(theta.shape)}")
        self.theta = theta
        super().__init__(theta.shape[:-1], theta.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> TwoMoonsLikelihood:
        new = self._get_checked_instance(TwoMoonsLikelihood, _instance)
        batch_shape = torch.Size(batch_shape)
        new.theta = self.theta.expand((*batch_shape, 2))
        super(TwoMoonsLikelihood, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def rsample(self, sample_shape=()) -> Tensor:
        shape = self._extended_shape(sample_shape)[:-1]
        q1, q2 = _moons_noise(shape, self.theta)
        return torch.stack((q1 + self.offset, q2), dim=-1) + _moons_shift(self.theta)

    def sample(self, sample_shape=()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        q = value - _moons_shift(self.theta)
        q1, q2 = q[..., 0] - self.offset, q[..., 1]
        norm = torch.hypot(q1, q2)
        r = torch.copysign(norm, q1)
        log_normal = -0.5 * ((r - self.radius) / self.radius_sd) ** 2 - math.log(
            self.radius_sd * math.sqrt(2 * math.pi)
        )
        return log_normal - (math.pi * norm).log()


class TwoMoons(Task):
    r"""The two-moons task of the simulation-based inference benchmark, as a Pyro model.

    .. math:: \theta \sim \mathcal{U}([-1, 1]^2), \quad x \mid \theta \sim
        \mathrm{TwoMoons}(\theta)

    (see :class:`TwoMoonsLikelihood`), with latent site ``"theta"`` and observed site
    ``"x"``. The likelihood depends on :math:`\theta` only through :math:`|u|` and
    :math:`v`, where :math:`(u, v) = ((\theta_1 + \theta_2) / \sqrt 2, (\theta_2 - \theta_1)
    / \sqrt 2)` is a rotation of :math:`\theta`, so the posterior has two mirror branches
    :math:`u > 0` and :math:`u < 0`; at the default observation :math:`x_o = (0, 0)` each is
    a thin crescent (radius 0.1, width 0.01), the two moons.

    Exact sampler (:meth:`reference_samples`). Given :math:`x_o`, the likelihood is
    :math:`p(x_o \mid \theta) = f(q)` with :math:`q = (x_{o,1} + |u| - 0.25, x_{o,2} - v)` and
    :math:`f` the density of :math:`(r \cos a, r \sin a)`. The map :math:`(|u|, v) \mapsto
    q` is a translation and a reflection, with unit Jacobian. So draw :math:`q` from the
    simulator's noise (:math:`a`, :math:`r`, as the simulator does), set :math:`|u| = q_1 -
    x_{o,1} + 0.25` and :math:`v = x_{o,2} - q_2`: then :math:`(|u|, v)` has density
    :math:`f(q(|u|, v))`. A fair random sign gives :math:`u = \pm |u|`, with density
    :math:`\frac12 f(q(|u|, v))` on the plane; rejecting :math:`|u| < 0` and
    :math:`\theta = ((u - v) / \sqrt 2, (u + v) / \sqrt 2)` outside the box multiplies it by
    the prior's indicator. The rotation back to :math:`\theta` has unit Jacobian, so the
    accepted :math:`\theta` have density proportional to :math:`\mathbb{1}_{[-1, 1]^2}(\theta)
    \, p(x_o \mid \theta)`: the posterior, exactly. The acceptance rate is
    :math:`2 p(x_o)`, about 1 at :math:`x_o = (0, 0)`.

    :meth:`posterior` raises (the posterior is no torch distribution); :meth:`log_joint`
    evaluates the unnormalised log posterior through the model.

    Arguments:
        seed: Seed of the simulated observation when ``observation="simulated"``.
        observation: :math:`x_o`: ``None`` for :math:`(0, 0)`, the standard picture of the
            task; ``"simulated"`` for a draw of the model from a :math:`\theta` drawn from the
            prior (both seeded by ``seed``); or a pair of numbers.

    Example:
        >>> from condgen.evaluate import TwoMoons
        >>> task = TwoMoons()
        >>> draws = task.reference_samples(10_000)["theta"]
        >>> task.log_joint({"theta": draws[:5]}).shape
        torch.Size([5])

    References:
        | Automatic Posterior Transformation for Likelihood-Free Inference (Greenberg et al.,
        | 2019)
        | https://arxiv.org/abs/1905.07488

        | Benchmarking Simulation-Based Inference (Lueckmann et al., 2021)
        | https://arxiv.org/abs/2101.04653
    """

    name = "two-moons"
    description = "uniform prior on [-1, 1]^2, two-moons simulator: a two-crescent posterior"

    def __init__(self, seed: int = 0, observation: Tensor | Sequence[float] | str | None = None):
        self.seed = seed
        if observation is None:
            x = torch.zeros(2)
        elif isinstance(observation, str):
            if observation != "simulated":
                raise ValueError(f"observation must be 'simulated' or a pair, got {observation!r}")
            generator = _generator(seed)
            self.truth = 2 * torch.rand(2, generator=generator) - 1
            q1, q2 = _moons_noise(torch.Size(), self.truth, generator)
            x = torch.stack((q1 + TwoMoonsLikelihood.offset, q2)) + _moons_shift(self.truth)
        else:
            x = torch.as_tensor(observation, dtype=torch.get_default_dtype())
            if x.shape != (2,) or not torch.isfinite(x).all():
                raise ValueError(f"observation must be 2 finite numbers, got {observation!r}")
        self.data = {"x": x}

    def model(self) -> None:
        theta = pyro.sample("theta", dist.Uniform(-1.0, 1.0).expand([2]).to_event(1))
        pyro.sample("x", TwoMoonsLikelihood(theta))

    def reference_samples(
        self, num_samples: int, seed: int = 0, max_proposals: int = 10**8
    ) -> dict[str, Tensor]:
        r"""Exact posterior draws, ``{"theta": [num_samples, 2]}``, by the sampler of the
        class docstring (the global random state is left alone).

        Raises:
            ValueError: If fewer than ``num_samples`` of ``max_proposals`` proposals are
                accepted (an observation the simulator can hardly reach from the box).
        """
        generator = _generator(seed)
        x = self.data["x"].double()
        kept, count, proposals, batch = [], 0, 0, max(num_samples, 1024)
        while count < num_samples and proposals < max_proposals:
            q1, q2 = _moons_noise(torch.Size([batch]), x, generator)
            w = q1 - x[0] + TwoMoonsLikelihood.offset  # |u|
            v = x[1] - q2
            sign = torch.randint(2, (batch,), generator=generator, dtype=x.dtype) * 2 - 1
            u = sign * w
            theta = torch.stack((u - v, u + v), dim=-1) / math.sqrt(2)
            accepted = theta[(w > 0) & (theta.abs() <= 1).all(-1)]
            kept.append(accepted)
            count, proposals = count + len(accepted), proposals + batch
            rate = max(count, 1) / proposals
            batch = min(int(1.2 * (num_samples - count) / rate) + 1024, 2**20)
        if count < num_samples:
            raise ValueError(
                f"only {count} of {proposals} proposals fell in the prior box for the "
                f"observation {self.data['x'].tolist()}: it is (nearly) out of the simulator's "
                "reach"
            )
        draws = torch.cat(kept)[:num_samples]
        return {"theta": draws.to(self.data["x"].dtype)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(observation={self.data['x'].tolist()})"


TASKS: dict[str, type[Task] | Callable[..., Task]] = {}
r"""The tasks by name: a :class:`Task` subclass or a function that returns a task."""

_DESCRIPTIONS: dict[str, str] = {}
_OPTIONAL_MODULES = ("condgen.evaluate.digits",)


def register_task(
    name: str,
    task: type[Task] | Callable[..., Task] | None = None,
    *,
    description: str | None = None,
):
    r"""Registers a task class (or a function that builds a task) under a name.

    Used as a decorator, ``@register_task("name")``, or called,
    ``register_task("name", factory)``. Registering the same class again (e.g. after a module
    reload) replaces it; another task under a taken name is refused.

    Arguments:
        name: The name :func:`get_task` takes.
        task: The class or function; when omitted, a decorator is returned.
        description: One line for :func:`available_tasks`; by default the class's
            ``description``, else the first line of its docstring.

    Returns:
        ``task`` (or a decorator that registers and returns its argument).

    Raises:
        ValueError: If ``name`` is taken by another task.

    Example:
        >>> from condgen.evaluate import Task, available_tasks, register_task
        >>> @register_task("my-task")
        ... class MyTask(Task):
        ...     "A task of one's own."
        >>> available_tasks()["my-task"]
        "A task of one's own."
    """

    def register(factory: type[Task] | Callable[..., Task]):
        existing = TASKS.get(name)
        if existing is not None and _qualified(existing) != _qualified(factory):
            raise ValueError(f"the task name {name!r} is taken by {_qualified(existing)}")
        TASKS[name] = factory
        if description is not None:
            _DESCRIPTIONS[name] = description
        return factory

    return register if task is None else register(task)


def _qualified(factory: Callable) -> str:
    return f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', factory)}"


def _load_optional() -> None:
    """Imports the modules that register more tasks, where they exist."""
    for module in _OPTIONAL_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name != module:  # the module exists but one of its imports is missing
                raise


def _describe(name: str) -> str:
    if name in _DESCRIPTIONS:
        return _DESCRIPTIONS[name]
    factory = TASKS[name]
    description = getattr(factory, "description", None)
    if isinstance(description, str) and description:
        return description
    return (inspect.getdoc(factory) or "").split("\n")[0]


def available_tasks() -> dict[str, str]:
    r"""The registered tasks, name to one-line description, in registration order.

    Example:
        >>> from condgen.evaluate import available_tasks
        >>> available_tasks()["two-moons"]
        'uniform prior on [-1, 1]^2, two-moons simulator: a two-crescent posterior'
    """
    _load_optional()
    return {name: _describe(name) for name in TASKS}


def get_task(name: str, **options) -> Task:
    r"""Builds the task registered under ``name`` with its options.

    Arguments:
        name: A name of :func:`available_tasks`.
        options: Keyword arguments of the task's class (or function).

    Raises:
        ValueError: If the name is unknown, or an option is not one of the task's (each
            message lists what exists).

    Example:
        >>> from condgen.evaluate import get_task
        >>> get_task("gmm", dim=80, obs_dim=2, seed=1).operator.shape
        torch.Size([2, 80])
    """
    _load_optional()
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; the tasks are: {', '.join(TASKS)}")
    factory = TASKS[name]
    parameters = inspect.signature(factory).parameters.values()
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        accepted = [p.name for p in parameters if p.kind in kinds]
        unknown = [key for key in options if key not in accepted]
        if unknown:
            raise ValueError(
                f"task {name!r} has no option {', '.join(map(repr, unknown))}; its options "
                f"are: {', '.join(accepted) or 'none'}"
            )
    return factory(**options)


register_task("gmm", GaussianMixtureInverseProblem)
register_task("gmm-circle", GaussianMixtureInverseProblem.circle, description=_CIRCLE)
register_task("gaussian-linear", GaussianLinear)
register_task("two-moons", TwoMoons)
register_task("normal-normal", NormalNormal)
register_task("linear-regression", BayesianLinearRegression)
register_task("beta-binomial", BetaBinomial)
