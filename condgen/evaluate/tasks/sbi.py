r"""Tasks of the simulation-based inference benchmark: the Gaussian linear task and the
two-moons simulator, with their exact posteriors, and SLCP with sbibm's reference draws."""

from __future__ import annotations

__all__ = ["SLCP", "GaussianLinear", "TwoMoons", "TwoMoonsLikelihood"]

import bz2
import csv
import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution
from torch import Tensor
from torch.distributions import Distribution, constraints

from ..._random import check_seed
from .base import Task, _generator


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
        self.seed = check_seed(seed)
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


def _sbibm_slcp_files() -> Path:
    r"""The folder of sbibm's SLCP files (observations, reference draws), found without
    importing sbibm (whose imports need packages condgen does not)."""
    spec = importlib.util.find_spec("sbibm")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "SLCP's observations and reference draws are those of sbibm, which is not "
            "installed: `pip install --no-deps sbibm` (its data files only are read), or pass "
            "an observation tensor"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "tasks" / "slcp" / "files"
    if not folder.is_dir():
        raise ImportError(f"sbibm is installed but has no SLCP files at {folder}")
    return folder


def _read_csv(path: Path) -> Tensor:
    r"""A numeric CSV file with a header row (plain or ``.bz2``), as ``[rows, columns]``."""
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rt", newline="") as file:
        rows = list(csv.reader(file))[1:]
    return torch.tensor([[float(v) for v in row] for row in rows if row])


class SLCP(Task):
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
    default_methods = ("nuts", "tempered")
    num_data, jitter, bound = 4, 1e-6, 3.0
    num_observations = 10

    def __init__(self, observation: int | Tensor | Sequence[float] = 1):
        self.num_observation: int | None = None
        self.truth: Tensor | None = None
        self._reference: Tensor | None = None
        if isinstance(observation, int) and not isinstance(observation, bool):
            if not 1 <= observation <= self.num_observations:
                raise ValueError(
                    f"sbibm's SLCP observations are numbered 1 to {self.num_observations}, "
                    f"got {observation}"
                )
            folder = _sbibm_slcp_files() / f"num_observation_{observation}"
            self.num_observation = observation
            x = _read_csv(folder / "observation.csv")
            self.truth = _read_csv(folder / "true_parameters.csv").reshape(5)
        else:
            x = torch.as_tensor(observation, dtype=torch.get_default_dtype())
            if x.numel() != 2 * self.num_data or x.shape not in ((8,), (1, 8), (4, 2)):
                raise ValueError(
                    f"observation must be a number 1 to {self.num_observations} or 8 numbers "
                    f"(shaped [8], [1, 8] or [4, 2]), got shape {tuple(x.shape)}"
                )
            if not torch.isfinite(x).all():
                raise ValueError("observation must be finite")
        self.data = {"x": x.reshape(self.num_data, 2)}

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

    def reference_samples(self, num_samples: int, seed: int = 0) -> dict[str, Tensor]:
        r"""``num_samples`` of sbibm's 10,000 reference posterior draws (a random subset
        chosen by ``seed``, without replacement), ``{"theta": [num_samples, 5]}``.

        Raises:
            ValueError: If the task was built on an observation tensor (no reference draws),
                or more than 10,000 draws are asked for.
        """
        if self.num_observation is None:
            raise ValueError(
                "SLCP has reference draws for sbibm's observations only (observation=1..10), "
                "not for a given observation tensor"
            )
        if self._reference is None:
            folder = _sbibm_slcp_files() / f"num_observation_{self.num_observation}"
            self._reference = _read_csv(folder / "reference_posterior_samples.csv.bz2")
        available = len(self._reference)
        if not 0 <= num_samples <= available:
            raise ValueError(f"sbibm has {available} reference draws, {num_samples} were asked")
        index = torch.randperm(available, generator=_generator(seed))[:num_samples]
        return {"theta": self._reference[index].clone()}

    def __repr__(self) -> str:
        if self.num_observation is not None:
            return f"{type(self).__name__}(observation={self.num_observation})"
        return f"{type(self).__name__}(observation={self.data['x'].reshape(-1).tolist()})"
