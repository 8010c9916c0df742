r"""The default exact sampler of path priors: SMC with a Gaussian twist and, for linear-Gaussian
observations, the locally optimal proposal."""

from __future__ import annotations

__all__ = ["SMC", "GaussianTwistKernel"]

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._gaussian import cholesky_log_prob, stable_cholesky
from ..posterior import Posterior
from ..priors.path import PathPrior
from ..problem import Problem
from .base import register
from .particle_filter import SMCKernel, SMCMethod
from .path import PathSetup
from .tds import TDSKernel
from .tempered import TemperedSMC, exact_log_density


class GaussianTwistKernel(SMCKernel):
    r"""The locally optimal moves of an SMC sampler for a linear-Gaussian observation
    :math:`y = A x + b + \sigma_y n`, with a twist that accounts for the spread of :math:`x`
    given :math:`x_t`.

    Let :math:`\mu, C` be the prior's mean and covariance (:meth:`PathPrior.moments`). For a
    Gaussian prior with these moments, :math:`x \mid x_t` is Gaussian with mean
    :math:`\mu + M_t (x_t - \alpha_t \mu)`, :math:`M_t = \alpha_t C (\alpha_t^2 C +
    \sigma_t^2 I)^{-1}`, and covariance :math:`R_t = \sigma_t^2 C (\alpha_t^2 C + \sigma_t^2
    I)^{-1}`, so that

    .. math:: \tilde p_t(y \mid x_t) = \mathcal{N}(\tilde y_t;\ H_t x_t,\ S_t), \quad
        H_t = A M_t, \quad \tilde y_t = y - b - A \mu + \alpha_t H_t \mu, \quad
        S_t = \mathrm{diag}(\sigma_y^2) + A R_t A^\top.

    The twist is flat at :math:`t = 1` and becomes the likelihood as :math:`t \to 0`; unlike
    :math:`p(y \mid D(x_t, t))` it does not reward particles for an average of modes early on.
    Being linear-Gaussian in :math:`x_t`, it gives the locally optimal proposal in closed
    form: with the ancestral kernel :math:`p(x_s \mid x_t) = \mathcal{N}(m(x_t), c^2 I)`,

    .. math:: q(x_s \mid x_t) \propto \mathcal{N}(x_s; m, c^2 I)\,
        \mathcal{N}(\tilde y_s; H_s x_s, S_s), \qquad
        w_s = \frac{\mathcal{N}(\tilde y_s;\ H_s m,\ c^2 H_s H_s^\top + S_s)}
        {\tilde p_t(y \mid x_t)},

    a weight known before the move (a fully adapted filter: resample, then move). A draw of
    :math:`q` is a prior draw corrected by Matheron's rule. One denoiser evaluation per
    particle and step, no gradient; the linear algebra is in the observation's dimension
    :math:`m`, done once for every time of the grid (memory :math:`K m d` for :math:`K`
    steps).
    """

    name = "gaussian"

    def __init__(
        self,
        setup: PathSetup,
        grid: Tensor,
        batch_size: int,
        moments: tuple[Tensor, Tensor, Tensor],
    ):
        super().__init__(setup, grid, batch_size)
        linear = setup.linear
        A = linear.A
        mean, eigenvalues, U = (v.to(A) for v in moments)
        # In a plate of n iid copies of the prior the flattened site holds n events: its mean
        # is the event's mean repeated, its covariance block-diagonal, kron(I_n, U) its
        # eigenvectors; U is applied block by block rather than built.
        n = setup.shape.numel() // len(mean)
        mean, eigenvalues = mean.repeat(n), eigenvalues.repeat(n)

        def rotate(M: Tensor, V: Tensor) -> Tensor:  # M @ kron(I_n, V)
            return (M.unflatten(-1, (n, -1)) @ V).flatten(-2)

        # every time of the grid at once: H_t [K+1, m, d], y_t [K+1, m], chol S_t [K+1, m, m]
        alpha, sigma = self.alphas[:, None], self.sigmas[:, None]
        denominator = alpha**2 * eigenvalues + sigma**2
        AU = rotate(A, U)
        self.H = rotate(AU * (alpha * eigenvalues / denominator).unsqueeze(-2), U.T)
        spread = (AU * (sigma**2 * eigenvalues / denominator).unsqueeze(-2)) @ AU.T
        self.chol_twist = stable_cholesky(torch.diag(linear.sigma.pow(2)) + spread)
        self.y = setup.y - linear.b - A @ mean + alpha * (self.H @ mean)
        # the predictive covariance of each step: c_i^2 H_{i+1} H_{i+1}^T + S_{i+1}
        H, chol = self.H[1:], self.chol_twist[1:]
        predictive = self.std[:, None, None] ** 2 * H @ H.mT + chol @ chol.mT
        self.chol_predictive = stable_cholesky(predictive)

    def _log_twist(self, x: Tensor, i: int) -> Tensor:
        residual = self.y[i] - x.flatten(1) @ self.H[i].T
        return cholesky_log_prob(residual, self.chol_twist[i])

    def start(self, x: Tensor) -> dict[str, Tensor]:
        return {"x": x, "log_twist": self._log_twist(x, 0)}

    def reweight(self, state: dict[str, Tensor], i: int) -> Tensor:
        state["mean"] = self.prior_mean(i, state["x"], self.denoise(state["x"], i))
        residual = self.y[i + 1] - state["mean"].flatten(1) @ self.H[i + 1].T
        return cholesky_log_prob(residual, self.chol_predictive[i]) - state["log_twist"]

    def move(self, state, i, reference):
        mean, std, H = state["mean"], self.std[i], self.H[i + 1]
        draw = (mean + std * torch.randn_like(mean)).flatten(1)
        noise = torch.randn(len(draw), len(H), dtype=draw.dtype, device=draw.device)
        simulated = draw @ H.T + noise @ self.chol_twist[i + 1].T
        innovation = torch.cholesky_solve((self.y[i + 1] - simulated).T, self.chol_predictive[i])
        x = (draw + std**2 * innovation.T @ H).reshape(mean.shape)
        if reference is not None:
            x[0] = reference
        state = {"x": x, "log_twist": self._log_twist(x, i + 1)}
        return state, torch.zeros_like(state["log_twist"])


@register
class SMC(SMCMethod):
    r"""Sequential Monte Carlo along a path prior, with a twist that accounts for the spread
    of :math:`x` given :math:`x_t` and, for a linear-Gaussian observation, the locally optimal
    proposal: condgen's default exact sampler for neural path priors.

    For an observation :math:`y = A x + b + \sigma_y n` (detected from the Pyro model, iid
    observations in plates included) the particles move by :class:`GaussianTwistKernel`:
    the twist is the likelihood under a Gaussian prior with the neural prior's mean and
    covariance, :math:`\mathcal{N}(y; A\,E[x \mid x_t] + b,\ \sigma_y^2 + A R_t A^\top)`, flat at
    :math:`t = 1` and exact at :math:`t = 0`; the proposal is the product of the ancestral
    kernel and the next twist, drawn exactly, and the weights are known before the move, so
    the particles are resampled before they move (a fully adapted auxiliary filter, as MCGdiff,
    FPS-SMC and DDSMC do for linear inverse problems). It needs one denoiser evaluation per
    particle and step and no gradient. For any other likelihood (Poisson, Student-t, a
    nonlinear forward model) it moves the particles as :class:`~condgen.methods.TDS` does,
    with the tempered twist :math:`p(y \mid D(x_t, t))^{\lambda_t}`.

    The last weights replace the twist by the exact likelihood, so the weighted particles
    target :math:`p(x \mid y)` up to the discretisation of the path (``steps``), and are
    consistent as their number grows. The prior's moments come from
    :meth:`~condgen.priors.PathPrior.moments` (exact for a Gaussian mixture; from
    ``moment_samples`` prior draws otherwise); they only shape the twist, so an error in them
    costs efficiency, not correctness.

    On a model whose every latent site has an exact log-density (classical distributions, a
    normalizing flow, a mixture prior beside a noise scale), ``smc`` is tempered SMC
    (:class:`~condgen.methods.TemperedSMC` with this method's ``num_runs``, ``rhat`` and
    ``max_particles``; ``steps`` and the path options do not apply), except for a path prior
    alone with a linear-Gaussian observation, where the path sampler's optimal proposal is
    better. A diffusion or flow-matching prior always takes the path: with a likelihood that is
    not linear-Gaussian its TDS moves can put the mode masses wrong, which the runs' R-hat
    shows (docs/benchmarks.md, "Figures behind the methods' docstrings").

    Known bias: the ancestral kernel has the exact mean of the reverse transition
    :math:`p(x_s \mid x_t)` but leaves :math:`a^2 \mathrm{Cov}[x \mid x_t]` out of its
    covariance, which moves mass between the prior's modes to first order in the step size (its
    error in the mode masses halves as the steps double; docs/benchmarks.md, "Mode masses at a
    low-dimensional observation"). Where a low-dimensional observation leaves a few distant
    modes, that bias adds to the Monte Carlo error of the mode masses, which is larger than
    that of as many exact draws, so that the draws can miss the exact posterior by more than
    their spread across runs shows (docs/benchmarks.md, "Self-check of the SMC samplers"). Use
    more ``steps`` and particles there; the stats ``ess`` and ``ancestors`` say when too few
    particles survive. :class:`~condgen.methods.CovarianceSMC` adds :math:`a^2 \mathrm{Cov}[x
    \mid x_t]` to the transition (two VJPs a step), which removes that bias (the evidence of a
    Gaussian prior is then exact); on the mixture benchmark, where the Monte Carlo error of the
    mode masses dominates at 1000 particles, it is no more accurate at equal cost.
    :class:`~condgen.methods.MomentTwistSMC` twists with the spread of :math:`x` given
    :math:`x_t` along the observed directions (:math:`d_y` VJPs a step): flatter weights, a
    closer evidence and more problems within the benchmark's tolerance at equal steps, for
    more network evaluations a step (docs/benchmarks.md, "Self-check of the SMC samplers").

    Arguments:
        steps: The number of steps.
        ess_threshold: Resample when ESS / particles falls below this.
        moment_samples: Prior draws that estimate the prior's moments (trained priors).
        batch_size: Particles whose network evaluations run at once.
        num_runs, rhat, max_particles: Independent runs, the quality target and its cap (see
            :class:`~condgen.methods.particle_filter.SMCMethod`).

    Stats:
        ``ess``, ``ancestors``, ``ess_trace``, ``resampled``, ``nfe``, ``kernel``
        (``"gaussian"`` or ``"tds"``; see :class:`~condgen.methods.particle_filter.SMCMethod`).

    Example:
        >>> import condgen, pyro, torch
        >>> import pyro.distributions as dist
        >>> from condgen.priors import GaussianMixturePrior
        >>> prior = GaussianMixturePrior(torch.ones(2), torch.tensor([[-2.0], [2.0]]),
        ...                              0.25 * torch.eye(1).expand(2, 1, 1))
        >>> def model():
        ...     x = pyro.sample("x", prior)
        ...     with pyro.plate("obs", 3):
        ...         pyro.sample("y", dist.Normal(x, 1.0).to_event(1))
        >>> data = {"y": torch.tensor([[1.5], [2.5], [1.0]])}
        >>> post = condgen.condition(model, data, method="smc", steps=50, num_samples=1000,
        ...                          seed=0, progress=False)
        >>> mean = post.moments("x")[0].item()  # exact: 13/7 (the mode at -2 has no mass)
        >>> post.stats["kernel"], abs(mean - 13 / 7) < 0.05, post.samples["x"].shape
        ('gaussian', True, torch.Size([4, 250, 1]))

    References:
        | Monte Carlo guided Diffusion for Bayesian linear inverse problems
        | (Cardoso et al., 2023) https://arxiv.org/abs/2308.07983

        | Diffusion Posterior Sampling for Linear Inverse Problem Solving: A Filtering
        | Perspective (Dou and Song, ICLR 2024)

        | Solving Linear-Gaussian Bayesian Inverse Problems with Decoupled Diffusion
        | Sequential Monte Carlo (Ekström Kelvinius et al., 2025) https://arxiv.org/abs/2502.06379
    """

    name = "smc"

    def __init__(
        self,
        steps: int = 100,
        ess_threshold: float = 0.5,
        moment_samples: int = 1024,
        batch_size: int = 1024,
        num_runs: int = 4,
        rhat: float | None = None,
        max_particles: int | None = None,
    ):
        super().__init__(steps, ess_threshold, batch_size, num_runs, rhat, max_particles)
        if moment_samples < 2:
            raise ValueError(f"moment_samples must be at least 2, got {moment_samples}")
        self.moment_samples = moment_samples
        self._moments: tuple | None = None  # (prior, spectral moments), set by moments()

    def run(self, problem: Problem, num_samples: int, progress: bool = True) -> Posterior:
        sites = list(problem.latent_sites.values())
        exact = all(map(exact_log_density, sites))
        if len(sites) == 1 and isinstance(sites[0].base, PathPrior):
            path = not exact or self.setup(problem).linear is not None
        else:
            path = not exact  # the path sampler refuses other sites with a clear error
        if path:
            return super().run(problem, num_samples, progress)
        tempered = TemperedSMC(
            num_runs=self.num_runs, rhat=self.rhat, max_particles=self.max_particles
        )
        tempered.name = self.name  # its messages and the Posterior name this method
        return tempered.run(problem, num_samples, progress)

    def kernel(self, setup: PathSetup) -> SMCKernel:
        grid = self.grid(setup)
        if setup.linear is None:
            return TDSKernel(setup, grid, self.batch_size)
        return GaussianTwistKernel(setup, grid, self.batch_size, self.moments(setup))

    #: The sampler of the prior draws behind :meth:`moments`: cheaper than the prior's own.
    #: They only shape the twist; on the digits prior (128 Heun steps, 255 network evaluations
    #: a draw) 32 DDIM steps give the covariance's trace within 6% at an eighth of the cost
    #: (docs/benchmarks.md, "Figures behind the methods' docstrings").
    moment_sampler: ClassVar[Mapping[str, Any]] = MappingProxyType(
        {"sampler": "ddim", "steps": 32}
    )

    def moments(self, setup: PathSetup) -> tuple[Tensor, Tensor, Tensor]:
        r"""The prior's mean and the eigenvalues and eigenvectors of its covariance (from
        ``moment_samples`` draws of :attr:`moment_sampler` for a trained prior, in closed form
        for a mixture), computed once per prior object and method (a Gibbs sampler sweeps many
        times)."""
        if self._moments is None or self._moments[0] is not setup.prior:
            mean, cov = setup.prior.moments(self.moment_samples, **self.moment_sampler)
            eigenvalues, eigenvectors = torch.linalg.eigh((cov + cov.T) / 2)
            floor = 1e-8 * float(eigenvalues.max().clamp(min=1e-30))
            self._moments = (setup.prior, (mean, eigenvalues.clamp(min=floor), eigenvectors))
        return self._moments[1]
