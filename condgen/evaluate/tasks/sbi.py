r"""Tasks of the simulation-based inference benchmark with a uniform or Gaussian prior and a
closed-form likelihood: Gaussian linear (and its uniform-prior variant), Gaussian mixture, two
moons and SLCP, with sbibm's observations and reference draws."""

from __future__ import annotations

__all__ = [
    "SLCP",
    "GaussianLinear",
    "GaussianLinearUniform",
    "GaussianMixture",
    "TwoMoons",
    "TwoMoonsLikelihood",
]

import abc
import math
from collections.abc import Sequence
from typing import ClassVar

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution
from torch import Tensor
from torch.distributions import Distribution, constraints

from ..._random import check_seed
from .base import _generator
from .sbibm import SbibmTask, rejection_sample


class GaussianLinear(SbibmTask):
    r"""The Gaussian linear task of the simulation-based inference benchmark.

    .. math:: \theta \sim \mathcal{N}(0, s^2 I_d), \quad x \mid \theta \sim
        \mathcal{N}(\theta, \sigma^2 I_d),

    with posterior :math:`\mathcal{N}(\mu, v I_d)`, :math:`v = (1/s^2 + 1/\sigma^2)^{-1} =
    s^2 \sigma^2 / (s^2 + \sigma^2)`, :math:`\mu = v x / \sigma^2 = s^2 x / (s^2 +
    \sigma^2)`. By default the observation :math:`x_o` is simulated from a parameter drawn
    from the prior, with :math:`d = 10`, :math:`s = \sigma = 0.1`.

    sbibm's ``gaussian_linear`` task has variances :math:`s^2 = \sigma^2 = 0.1` (standard
    deviations :math:`\sqrt{0.1} \approx 0.316`, not 0.1): :meth:`GaussianLinear.sbibm`
    (``get_task("gaussian_linear", observation=n)``) builds it at sbibm's observation ``n``,
    with its :attr:`truth` and reference draws (:meth:`sbibm_samples`).
    :meth:`reference_samples` draws the closed-form posterior.

    Arguments:
        dim: The dimension :math:`d`.
        prior_scale: :math:`s`.
        noise: :math:`\sigma`.
        seed: Seed of the simulated parameter and observation.
        observation: None to simulate :math:`x_o`; sbibm's observation number, 1 to 10 (with
            sbibm's settings only: ``dim=10``, ``prior_scale=noise=sqrt(0.1)``); or
            :math:`d` numbers.

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
    default_methods = ("nuts", "svi", "importance")
    sbibm_name = "gaussian_linear"
    sbibm_options: ClassVar[dict[str, float]] = {
        "dim": 10,
        "prior_scale": math.sqrt(0.1),
        "noise": math.sqrt(0.1),
    }

    def __init__(
        self,
        dim: int = 10,
        prior_scale: float = 0.1,
        noise: float = 0.1,
        seed: int = 0,
        observation: int | Tensor | Sequence[float] | None = None,
    ):
        if dim < 1 or not (prior_scale > 0 and noise > 0):
            raise ValueError("dim must be positive, and prior_scale and noise positive")
        self.dim, self.prior_scale, self.noise = dim, prior_scale, noise
        if observation is None:
            generator = _generator(seed)
            self.truth = prior_scale * torch.randn(dim, generator=generator)
            self.data = {"x": self.truth + noise * torch.randn(dim, generator=generator)}
            return
        if isinstance(observation, int) and (dim, prior_scale, noise) != tuple(
            self.sbibm_options.values()
        ):
            raise ValueError(
                "sbibm's gaussian_linear observations are of dim=10, prior_scale=noise=sqrt(0.1): "
                "use GaussianLinear.sbibm(observation) or get_task('gaussian_linear', "
                f"observation={observation})"
            )
        self._observe(observation, (dim,))

    def model(self) -> None:
        prior = dist.Normal(0.0, self.prior_scale).expand([self.dim]).to_event(1)
        theta = pyro.sample("theta", prior)
        pyro.sample("x", dist.Normal(theta, self.noise).to_event(1))

    def posterior(self) -> dict[str, Distribution]:
        var = 1 / (1 / self.prior_scale**2 + 1 / self.noise**2)
        mean = var * self.data["x"] / self.noise**2
        return {"theta": dist.Normal(mean, torch.full_like(mean, var**0.5)).to_event(1)}

    def log_evidence(self) -> float:
        r""":math:`x \sim \mathcal{N}(0, (s^2 + \sigma^2) I_d)`."""
        scale = (self.prior_scale**2 + self.noise**2) ** 0.5
        return float(dist.Normal(0.0, scale).log_prob(self.data["x"].double()).sum())


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


class TwoMoons(SbibmTask):
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
            prior (both seeded by ``seed``); sbibm's observation number, 1 to 10 (with its
            :attr:`truth` and sbibm's reference draws, :meth:`sbibm_samples`); or a pair of
            numbers.

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
    default_methods = ("nuts", "svi", "importance")
    sbibm_name = "two_moons"

    def __init__(
        self, seed: int = 0, observation: int | Tensor | Sequence[float] | str | None = None
    ):
        self.seed = check_seed(seed)
        if observation is None:
            self.data = {"x": torch.zeros(2)}
        elif isinstance(observation, str):
            if observation != "simulated":
                raise ValueError(f"observation must be 'simulated' or a pair, got {observation!r}")
            generator = _generator(seed)
            self.truth = 2 * torch.rand(2, generator=generator) - 1
            q1, q2 = _moons_noise(torch.Size(), self.truth, generator)
            x = torch.stack((q1 + TwoMoonsLikelihood.offset, q2)) + _moons_shift(self.truth)
            self.data = {"x": x}
        else:
            self._observe(observation, (2,))

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
        x = self.data["x"].double()

        def propose(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
            q1, q2 = _moons_noise(torch.Size([n]), x, generator)
            w = q1 - x[0] + TwoMoonsLikelihood.offset  # |u|
            v = x[1] - q2
            sign = torch.randint(2, (n,), generator=generator, dtype=x.dtype) * 2 - 1
            u = sign * w
            theta = torch.stack((u - v, u + v), dim=-1) / math.sqrt(2)
            return theta, (w > 0) & (theta.abs() <= 1).all(-1)

        draws = rejection_sample(propose, num_samples, seed, max_proposals, x)
        return {"theta": draws.to(self.data["x"].dtype)}


class SLCP(SbibmTask):
    r"""The SLCP task ("simple likelihood, complex posterior") of the simulation-based
    inference benchmark, as a Pyro model.

    .. math:: \theta \sim \mathcal{U}([-3, 3]^5), \quad x_1, \dots, x_4 \mid \theta
        \overset{\text{iid}}{\sim} \mathcal{N}(m, S),

    with :math:`m = (\theta_1, \theta_2)`, :math:`s_1 = \theta_3^2`, :math:`s_2 =
    \theta_4^2`, :math:`\rho = \tanh \theta_5` and

    .. math:: S = \begin{pmatrix} s_1^2 + \epsilon & \rho s_1 s_2 \\ \rho s_1 s_2 &
        s_2^2 + \epsilon \end{pmatrix}, \quad \epsilon = 10^{-6}

    (sbibm's simulator adds :math:`\epsilon` to the diagonal). The latent site ``"theta"`` is
    shaped ``[5]``, the observed site ``"x"`` ``[4, 2]``: sbibm's 8-D observation is the four
    2-D draws one after the other, :math:`(x_{1,1}, x_{1,2}, x_{2,1}, \dots, x_{4,2})`. The
    likelihood depends on :math:`\theta_3` and :math:`\theta_4` through their squares only,
    so the posterior has four mirror modes (the signs of :math:`\theta_3` and
    :math:`\theta_4`), narrow at sbibm's observations.

    The likelihood is evaluated through the Cholesky factor of :math:`S` in closed form,
    :math:`L_{11} = \sqrt{S_{11}}`, :math:`L_{21} = S_{12} / L_{11}`, :math:`L_{22} =
    \sqrt{s_2^2 (\operatorname{sech}^2 \theta_5 + \rho^2 \epsilon / S_{11}) + \epsilon}`
    (:math:`S_{22} - L_{21}^2` written without cancellation), which no batch of particles
    can make fail.

    There is no exact sampler (``exact = False``): :meth:`reference_samples` gives sbibm's
    10,000 reference draws of the observation (rejection sampling from a proposal fitted to
    sampling-importance-resampling, by the benchmark's authors). The observations and draws are
    read from the files of the ``sbibm`` package (``pip install --no-deps sbibm``; nothing is
    downloaded, and sbibm is not imported), which condgen does not depend on; a task built on an
    observation tensor needs no sbibm, and has no reference draws.

    Arguments:
        observation: sbibm's observation number, 1 to 10, or an observation: 8 numbers
            (shaped ``[8]``, ``[1, 8]`` as sbibm gives them, or ``[4, 2]``).

    Attributes:
        truth: The parameter that simulated sbibm's observation (None for a given tensor).

    Raises:
        ImportError: If an observation number is given and sbibm is not installed.

    Example:
        >>> import torch
        >>> from condgen.evaluate import SLCP
        >>> task = SLCP(observation=torch.zeros(8))
        >>> task.data["x"].shape, task.log_joint({"theta": torch.ones(3, 5)}).shape
        (torch.Size([4, 2]), torch.Size([3]))

    References:
        | Sequential Neural Likelihood (Papamakarios, Sterratt and Murray, 2019)
        | https://arxiv.org/abs/1805.07226

        | Benchmarking Simulation-Based Inference (Lueckmann et al., 2021)
        | https://arxiv.org/abs/2101.04653
    """

    name = "slcp"
    description = (
        "uniform prior on [-3, 3]^5, 4 draws of a 2-D Gaussian with mean and covariance set by "
        "theta: the SBI benchmark's SLCP task (sbibm's observations and reference draws)"
    )
    exact = False
    sbibm_name = "slcp"
    num_data, jitter, bound = 4, 1e-6, 3.0

    def __init__(self, observation: int | Tensor | Sequence[float] = 1):
        self._observe(observation, (self.num_data, 2))

    def likelihood(self, theta: Tensor) -> Distribution:
        r"""The distribution of the four draws given ``theta`` ``[*batch, 5]``: batch shape
        ``batch``, event shape ``[4, 2]``."""
        m = theta[..., :2]
        s1, s2, rho = theta[..., 2] ** 2, theta[..., 3] ** 2, theta[..., 4].tanh()
        var1 = s1**2 + self.jitter
        l11 = var1.sqrt()
        l21 = rho * s1 * s2 / l11
        sech2 = 1 / theta[..., 4].cosh() ** 2
        l22 = (s2**2 * (sech2 + rho**2 * self.jitter / var1) + self.jitter).sqrt()
        zero = torch.zeros_like(l11)
        scale_tril = torch.stack((l11, zero, l21, l22), dim=-1).reshape(*l11.shape, 2, 2)
        draw = dist.MultivariateNormal(m.unsqueeze(-2), scale_tril=scale_tril.unsqueeze(-3))
        return draw.expand((*theta.shape[:-1], self.num_data)).to_event(1)

    def model(self) -> None:
        prior = dist.Uniform(-self.bound, self.bound).expand([5]).to_event(1)
        theta = pyro.sample("theta", prior)
        pyro.sample("x", self.likelihood(theta))


class _BoxLocationTask(SbibmTask):
    r"""A uniform prior on a box and a likelihood symmetric about :math:`\theta`:
    :math:`\theta \sim \mathcal{U}([-b, b]^d)`, :math:`x \mid \theta \sim f(x - \theta)` with
    :math:`f(-\epsilon) = f(\epsilon)`.

    Exact sampler (:meth:`reference_samples`). The posterior is :math:`p(\theta \mid x_o)
    \propto \mathbb{1}_{[-b, b]^d}(\theta) \, f(x_o - \theta) = \mathbb{1}_{[-b, b]^d}(\theta)
    \, f(\theta - x_o)`: the likelihood's own distribution at :math:`\theta = x_o`, restricted
    to the box. So draws of the simulator at :math:`x_o` that fall in the box are exact
    posterior draws (rejection sampling with acceptance rate :math:`P(x_o + \epsilon \in [-b,
    b]^d)`).
    """

    exact = True
    bound: ClassVar[float]
    dim: ClassVar[int]

    def __init__(self, observation: int | Tensor | Sequence[float] = 1):
        self._observe(observation, (self.dim,))

    @abc.abstractmethod
    def likelihood(self, theta: Tensor) -> Distribution:
        r"""The distribution of :math:`x` given ``theta`` ``[*batch, d]``: batch shape
        ``batch``, event shape ``[d]``."""

    def model(self) -> None:
        prior = dist.Uniform(-self.bound, self.bound).expand([self.dim]).to_event(1)
        theta = pyro.sample("theta", prior)
        pyro.sample("x", self.likelihood(theta))

    def reference_samples(
        self, num_samples: int, seed: int = 0, max_proposals: int = 10**8
    ) -> dict[str, Tensor]:
        r"""Exact posterior draws, ``{"theta": [num_samples, d]}``, by the sampler of the class
        docstring (the global random state is left alone).

        Raises:
            ValueError: If fewer than ``num_samples`` of ``max_proposals`` proposals fall in
                the box.
        """
        x = self.data["x"].double()
        simulator = self.likelihood(x)

        def propose(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
            with torch.random.fork_rng():
                torch.manual_seed(int(torch.randint(2**62, (), generator=generator)))
                theta = simulator.sample((n,))
            return theta, (theta.abs() <= self.bound).all(-1)

        draws = rejection_sample(propose, num_samples, seed, max_proposals, x)
        return {"theta": draws.to(self.data["x"].dtype)}


class GaussianMixture(_BoxLocationTask):
    r"""The Gaussian mixture task of the simulation-based inference benchmark, as a Pyro model.

    .. math:: \theta \sim \mathcal{U}([-10, 10]^2), \quad x \mid \theta \sim
        \tfrac12 \mathcal{N}(\theta, I_2) + \tfrac12 \mathcal{N}(\theta, 0.01 \, I_2),

    a broad and a narrow component with a common mean (Sisson et al., 2007, in two
    dimensions). The posterior is the same mixture centred at :math:`x_o`, restricted to the
    box, and :meth:`reference_samples` draws it exactly (see :class:`_BoxLocationTask`). The
    latent site is ``"theta"`` ``[2]``, the observed site ``"x"`` ``[2]``.

    Arguments:
        observation: sbibm's observation number, 1 to 10 (its :attr:`truth` and reference
            draws :meth:`sbibm_samples` come with it), or 2 numbers.

    Raises:
        ImportError: If an observation number is given and sbibm is not installed.

    Example:
        >>> import torch
        >>> from condgen.evaluate import GaussianMixture
        >>> task = GaussianMixture(observation=torch.tensor([1.0, -2.0]))
        >>> task.reference_samples(1000)["theta"].shape
        torch.Size([1000, 2])

    References:
        | Sequential Monte Carlo without likelihoods (Sisson, Fan and Tanaka, 2007)
        | https://doi.org/10.1073/pnas.0607208104

        | Benchmarking Simulation-Based Inference (Lueckmann et al., 2021)
        | https://arxiv.org/abs/2101.04653
    """

    name = sbibm_name = "gaussian_mixture"
    description = (
        "uniform prior on [-10, 10]^2, x ~ N(theta, I)/2 + N(theta, 0.01 I)/2: the SBI "
        "benchmark's Gaussian mixture (sbibm's observations)"
    )
    bound, dim = 10.0, 2
    scales, weights = (1.0, 0.1), (0.5, 0.5)

    def likelihood(self, theta: Tensor) -> Distribution:
        scales = theta.new_tensor(self.scales).unsqueeze(-1)  # [components, 1]
        components = dist.Normal(theta.unsqueeze(-2), scales).to_event(1)
        mixing = dist.Categorical(theta.new_tensor(self.weights).expand(components.batch_shape))
        return dist.MixtureSameFamily(mixing, components)


class GaussianLinearUniform(_BoxLocationTask):
    r"""The Gaussian linear task with a uniform prior, of the simulation-based inference
    benchmark, as a Pyro model.

    .. math:: \theta \sim \mathcal{U}([-1, 1]^{10}), \quad x \mid \theta \sim
        \mathcal{N}(\theta, 0.1 \, I_{10}).

    The posterior is :math:`\mathcal{N}(x_o, 0.1 \, I)` restricted to the box, a product of
    truncated normals, and :meth:`reference_samples` draws it exactly (see
    :class:`_BoxLocationTask`). The latent site is ``"theta"`` ``[10]``, the observed site
    ``"x"`` ``[10]``.

    Arguments:
        observation: sbibm's observation number, 1 to 10 (its :attr:`truth` and reference
            draws :meth:`sbibm_samples` come with it), or 10 numbers.

    Raises:
        ImportError: If an observation number is given and sbibm is not installed.

    Example:
        >>> import torch
        >>> from condgen.evaluate import GaussianLinearUniform
        >>> task = GaussianLinearUniform(observation=torch.zeros(10))
        >>> task.reference_samples(1000)["theta"].shape
        torch.Size([1000, 10])

    References:
        | Benchmarking Simulation-Based Inference (Lueckmann et al., 2021)
        | https://arxiv.org/abs/2101.04653
    """

    name = sbibm_name = "gaussian_linear_uniform"
    description = (
        "uniform prior on [-1, 1]^10, x ~ N(theta, 0.1 I): the SBI benchmark's Gaussian linear "
        "uniform task (sbibm's observations)"
    )
    bound, dim, noise = 1.0, 10, math.sqrt(0.1)

    def likelihood(self, theta: Tensor) -> Distribution:
        return dist.Normal(theta, self.noise).to_event(1)
