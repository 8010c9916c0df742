r"""A neural-prior site beside a classical unknown, with the exact joint posterior: a
Gaussian-mixture prior observed with an unknown noise scale."""

from __future__ import annotations

__all__ = ["UnknownNoiseMixture"]

import math

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from .._random import check_seed
from ..priors import GaussianMixturePrior


class UnknownNoiseMixture:
    r"""The model :math:`s \sim \mathrm{HalfNormal}(1)`, :math:`x \sim \sum_k w_k
    \mathcal{N}(m_k, c_k I)`, :math:`y_i \mid x, s \sim \mathcal{N}(x, s^2 I)` for
    :math:`i = 1, \dots, n`, with its exact posterior.

    Given :math:`s`, :math:`\bar y` is sufficient for :math:`x` and

    .. math:: p(y \mid s) = \sum_k w_k \mathcal{N}(\bar y; m_k, (c_k + s^2/n) I)\,
        (2\pi s^2)^{-(n-1) d/2}\, n^{-d/2} \exp\Big(-\frac{\sum_i \|y_i - \bar y\|^2}{2 s^2}\Big),

    so :math:`p(s \mid y)` is exact on a fine grid and :math:`x \mid s, y` is a Gaussian
    mixture in closed form. The prior is a :class:`~condgen.priors.GaussianMixturePrior`, a
    path prior with the exact denoiser, so ``"gibbs"`` can be checked against the truth and
    ``"nuts"`` can run on the exact mixture density.

    Arguments:
        weights: Mixture weights, shaped ``[K]``.
        means: Component means, shaped ``[K, d]``.
        variances: Isotropic component variances :math:`c_k`, shaped ``[K]``.
        y: The observations, shaped ``[n, d]``.

    Example:
        >>> from condgen.evaluate import UnknownNoiseMixture
        >>> task = UnknownNoiseMixture.default()
        >>> mean, sd = task.noise_moments()
        >>> round(mean, 2), round(sd, 2), task.reference_samples(100, seed=0)["x"].shape
        (0.85, 0.23, torch.Size([100, 2]))
    """

    def __init__(self, weights: Tensor, means: Tensor, variances: Tensor, y: Tensor):
        self.weights = torch.as_tensor(weights) / torch.as_tensor(weights).sum()
        self.means, self.variances = torch.as_tensor(means), torch.as_tensor(variances)
        self.y = torch.as_tensor(y)
        if self.y.dim() != 2 or self.y.shape[1] != self.means.shape[1]:
            raise ValueError(
                f"y must be shaped [n, d] with d = {self.means.shape[1]}, got "
                f"{tuple(self.y.shape)}"
            )
        eye = torch.eye(self.means.shape[1], dtype=self.means.dtype)
        self.prior = GaussianMixturePrior(
            self.weights, self.means, self.variances[:, None, None] * eye
        )
        self.data = {"y": self.y}

    @classmethod
    def default(cls) -> UnknownNoiseMixture:
        r"""Three components in 2-D and five observations between two of them."""
        return cls(
            torch.tensor([0.5, 0.3, 0.2]),
            torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, 3.0]]),
            torch.tensor([0.5, 0.3, 0.4]),
            torch.tensor([[0.9, 1.2], [1.8, 0.3], [-0.2, 1.9], [1.1, 0.2], [0.4, 1.4]]),
        )

    def model(self) -> None:
        r"""The Pyro model: sites ``s``, ``x`` (the mixture prior) and ``y`` in a plate."""
        s = pyro.sample("s", dist.HalfNormal(1.0))
        x = pyro.sample("x", self.prior)
        with pyro.plate("obs", len(self.y)):
            pyro.sample("y", dist.Normal(x, s.unsqueeze(-1)).to_event(1))

    def _log_marginal(self, s: Tensor) -> Tensor:
        r""":math:`\log p(y \mid s)` for a batch of noise scales (float64)."""
        n, d = self.y.shape
        y, means = self.y.double(), self.means.double()
        ybar = y.mean(0)
        v = self.variances.double() + s[:, None] ** 2 / n
        square = (ybar - means).pow(2).sum(-1)
        components = self.weights.double().log() - 0.5 * (square / v + d * (2 * math.pi * v).log())
        within = -0.5 * (n - 1) * d * (2 * math.pi * s**2).log() - 0.5 * d * math.log(n)
        return components.logsumexp(-1) + within - (y - ybar).pow(2).sum() / (2 * s**2)

    def _noise_grid(self) -> tuple[Tensor, Tensor]:
        grid = torch.linspace(1e-3, 6.0, 20_000, dtype=torch.float64)
        log_post = dist.HalfNormal(1.0).log_prob(grid) + self._log_marginal(grid)
        return grid, log_post.softmax(0)

    def noise_moments(self) -> tuple[float, float]:
        r"""The exact posterior mean and sd of :math:`s` (on a grid of 20,000 points)."""
        grid, p = self._noise_grid()
        mean = (p * grid).sum()
        return float(mean), float((p * (grid - mean) ** 2).sum().sqrt())

    def reference_samples(self, num_samples: int, seed: int = 0) -> dict[str, Tensor]:
        r"""Exact joint draws: :math:`s` from the grid posterior, then :math:`x` from its
        mixture posterior given :math:`s`.

        Returns:
            ``{"s": [num_samples], "x": [num_samples, d]}`` in the task's dtype.
        """
        generator = torch.Generator().manual_seed(check_seed(seed))
        grid, p = self._noise_grid()
        s = grid[torch.multinomial(p, num_samples, replacement=True, generator=generator)]
        n, d = self.y.shape
        v = s[:, None] ** 2 / n
        c, means = self.variances.double(), self.means.double()
        ybar = self.y.double().mean(0)
        log_w = self.weights.double().log() - 0.5 * (
            (ybar - means).pow(2).sum(-1) / (c + v) + d * (c + v).log()
        )
        k = torch.multinomial(log_w.softmax(-1), 1, generator=generator).squeeze(-1)
        var = 1 / (1 / c[k] + 1 / v[:, 0])
        loc = var[:, None] * (means[k] / c[k, None] + ybar / v)
        z = torch.randn(num_samples, d, generator=generator, dtype=torch.float64)
        dtype = self.means.dtype
        return {"s": s.to(dtype), "x": (loc + var.sqrt()[:, None] * z).to(dtype)}
