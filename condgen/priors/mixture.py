r"""A Gaussian-mixture prior with the exact denoiser at every noise level: the ground truth."""

from __future__ import annotations

__all__ = ["GaussianMixturePrior"]

import math

import pyro.distributions as dist
import torch
from torch import Tensor

from .path import PathPrior
from .schedules import Schedule, VPSchedule


class GaussianMixturePrior(PathPrior):
    r"""A Gaussian mixture :math:`p(x) = \sum_k w_k \mathcal{N}(x; m_k, C_k)`, analytic along a
    Gaussian path.

    The noised mixture is again a mixture,
    :math:`p_t(x_t) = \sum_k w_k \mathcal{N}(x_t; \alpha_t m_k, S_k)` with
    :math:`S_k = \alpha_t^2 C_k + \sigma_t^2 I`, so the denoiser is closed form:

    .. math:: E[x \mid x_t] = \sum_k r_k(x_t) \big(m_k + \alpha_t C_k S_k^{-1}
        (x_t - \alpha_t m_k)\big), \quad r_k(x_t) \propto w_k \mathcal{N}(x_t; \alpha_t m_k,
        S_k).

    :meth:`log_prob` and :meth:`sample` are exact; ``sample(..., sampler=...)`` runs a path
    sampler on the exact denoiser instead, which isolates a sampler's discretisation error.

    Arguments:
        weights: Mixture weights :math:`w`, shaped ``[K]`` (normalised here).
        means: Component means :math:`m`, shaped ``[K, d]``.
        covs: Component covariances :math:`C`, shaped ``[K, d, d]``.
        schedule: The path along which :meth:`denoise` and :meth:`score` are defined.

    Example:
        >>> prior = GaussianMixturePrior(torch.ones(2), torch.tensor([[-2.0], [2.0]]),
        ...                              0.25 * torch.eye(1).expand(2, 1, 1))
        >>> prior.denoise(torch.zeros(5, 1), torch.full((5,), 0.5))
    """

    def __init__(
        self,
        weights: Tensor,
        means: Tensor,
        covs: Tensor,
        schedule: Schedule | str | None = None,
        sampler: str = "heun",
        steps: int = 64,
    ):
        weights, means, covs = (torch.as_tensor(v) for v in (weights, means, covs))
        if means.dim() != 2:
            raise ValueError(f"means must be shaped [K, d], got {tuple(means.shape)}")
        k, d = means.shape
        if weights.shape != (k,) or covs.shape != (k, d, d):
            raise ValueError(
                f"weights must be shaped [K]={[k]} and covs [K, d, d]={[k, d, d]}, got "
                f"{list(weights.shape)} and {list(covs.shape)}"
            )
        if (weights < 0).any() or not torch.isfinite(weights).all() or weights.sum() <= 0:
            raise ValueError("weights must be finite, non-negative and not all zero")
        try:
            torch.linalg.cholesky(covs)
        except RuntimeError:
            raise ValueError("covs must be symmetric positive definite") from None
        super().__init__(schedule or VPSchedule(), (d,), sampler=sampler, steps=steps)
        self.weights = weights / weights.sum()
        self.means, self.covs = means, covs
        self._clean = self.mixture(None)  # built once: log_prob is called in every NUTS step

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        return self.means.device, self.means.dtype

    def mixture(self, t: Tensor | float | None = None) -> dist.MixtureSameFamily:
        r"""The mixture at time ``t`` (scalar) as a distribution; at ``t=None`` the clean one."""
        means, covs = self.means, self.covs
        if t is not None:
            alpha, sigma = self.schedule(torch.as_tensor(t, dtype=means.dtype))
            eye = torch.eye(means.shape[-1], dtype=means.dtype, device=means.device)
            means, covs = alpha * means, alpha**2 * covs + sigma**2 * eye
        return dist.MixtureSameFamily(
            dist.Categorical(self.weights), dist.MultivariateNormal(means, covs)
        )

    def log_prob(self, x: Tensor, **options) -> Tensor:
        r"""Exact log-density; with ODE ``options`` (see :meth:`PathPrior.log_prob`), the
        probability-flow ODE estimate on the exact denoiser instead."""
        if options:
            return super().log_prob(x, **options)
        self._check_event(x)
        return self._clean.log_prob(x)

    def sample(self, sample_shape=(), **sampler_options) -> Tensor:
        r"""Exact draws; with sampler options (``sampler``, ``steps``, ``eta``) a path sampler
        on the exact denoiser."""
        if sampler_options:
            return super().sample(sample_shape, **sampler_options)
        with torch.no_grad():
            return self._clean.sample(torch.Size(sample_shape) + self.batch_shape)

    def _components(self, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior responsibilities log r_k [*, K] and component means E[x | x_t, k]."""
        t = self._times(x_t, t)
        alpha, sigma = self.schedule(t)
        alpha, sigma = alpha[..., None, None, None], sigma[..., None, None, None]
        d = self.means.shape[-1]
        eye = torch.eye(d, dtype=x_t.dtype, device=x_t.device)
        cov_t = alpha**2 * self.covs + sigma**2 * eye  # [*, K, d, d]
        chol = torch.linalg.cholesky(cov_t)
        residual = (x_t.unsqueeze(-2) - alpha[..., 0] * self.means).unsqueeze(-1)  # [*, K, d, 1]
        solved = torch.cholesky_solve(residual, chol)
        maha = (residual * solved).sum((-2, -1))
        half_log_det = chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        log_normal = -0.5 * maha - half_log_det - 0.5 * d * math.log(2 * math.pi)
        log_r = self.weights.log() + log_normal
        means = self.means + alpha[..., 0] * (self.covs @ solved).squeeze(-1)
        return log_r, means

    def denoise(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        r"""The exact denoiser :math:`E[x \mid x_t]`."""
        self.nfe += 1
        log_r, means = self._components(x_t, t)
        return (log_r.softmax(-1).unsqueeze(-1) * means).sum(-2)

    def log_prob_t(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        r"""The exact log-density :math:`\log p_t(x_t)` of the noised mixture."""
        log_r, _ = self._components(x_t, t)
        return log_r.logsumexp(-1)
