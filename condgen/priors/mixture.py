r"""A Gaussian-mixture prior with the exact denoiser at every noise level: the ground truth."""

from __future__ import annotations

__all__ = ["GaussianMixturePrior"]

import math
from typing import Any

import pyro.distributions as dist
import torch
from torch import Tensor

from .counting import count_evaluation
from .encoding import schedule_config
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
        >>> import torch
        >>> from condgen.priors import GaussianMixturePrior
        >>> prior = GaussianMixturePrior(torch.ones(2), torch.tensor([[-2.0], [2.0]]),
        ...                              0.25 * torch.eye(1).expand(2, 1, 1))
        >>> prior.sample((1000,)).shape
        torch.Size([1000, 1])
        >>> x_t = torch.tensor([[-1.0], [0.0], [1.0]])
        >>> prior.denoise(x_t, 0.5).squeeze(-1).round(decimals=2)  # E[x | x_t] on the VP path
        tensor([-1.1200,  0.0000,  1.1200])
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
        k, d = (*means.shape, 0, 0)[:2]
        if means.dim() != 2 or weights.shape != (k,) or covs.shape != (k, d, d):
            raise ValueError(
                "weights, means and covs must be shaped [K], [K, d] and [K, d, d] for K "
                f"components in d dimensions; got weights {list(weights.shape)}, means "
                f"{list(means.shape)} and covs {list(covs.shape)}"
            )
        if (weights < 0).any() or not torch.isfinite(weights).all() or weights.sum() <= 0:
            raise ValueError("weights must be finite, non-negative and not all zero")
        covs = (covs + covs.mT) / 2
        offdiagonal = covs - torch.diag_embed(covs.diagonal(dim1=-2, dim2=-1))
        self._diagonal = bool((offdiagonal == 0).all())
        if self._diagonal:  # no rotation: every operation is O(K d) per point
            eigenvalues, eigenvectors = covs.diagonal(dim1=-2, dim2=-1), None
        else:
            eigenvalues, eigenvectors = torch.linalg.eigh(covs)
        if not (eigenvalues > 0).all():
            raise ValueError("covs must be symmetric positive definite")
        super().__init__(schedule or VPSchedule(), (d,), sampler=sampler, steps=steps)
        self.weights = weights / weights.sum()
        self.means, self.covs = means, covs
        # C_k = U_k diag(lambda_k) U_k^T, computed once: the noised covariances
        # alpha^2 C_k + sigma^2 I share the eigenvectors, so no matrix is factorised per call
        self._eigenvalues, self._eigenvectors = eigenvalues, eigenvectors
        # isotropic components c_k I: responsibilities and denoiser by matrix products, with no
        # [points, K, d] intermediate (the d = 800 benchmark setting)
        self._isotropic = self._diagonal and bool((eigenvalues == eigenvalues[:, :1]).all())
        self._square_norms = means.double().pow(2).sum(-1)

    def to(self, *args, **kwargs) -> GaussianMixturePrior:
        super().to(*args, **kwargs)
        self._square_norms = self.means.double().pow(2).sum(-1)  # double on purpose
        return self

    def _encode(self) -> tuple[dict, dict]:
        config = {
            "schedule": schedule_config(self.schedule),
            "sampler": self.sampler,
            "steps": self.steps,
            "exact_divergence": self.exact_divergence,
        }
        return config, {k: getattr(self, k).detach().clone() for k in ("weights", "means", "covs")}

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        return self.means.device, self.means.dtype

    def mixture(self, t: Tensor | float | None = None) -> dist.MixtureSameFamily:
        r"""The mixture at time ``t`` (scalar) as a torch distribution; at ``t=None`` the clean
        one. (The methods of this class do not build it: they work in the eigenbases of the
        covariances, which is cheaper.)"""
        means, covs = self.means, self.covs
        if t is not None:
            alpha, sigma = self.schedule(
                torch.as_tensor(t, dtype=means.dtype, device=means.device)
            )
            eye = torch.eye(means.shape[-1], dtype=means.dtype, device=means.device)
            means, covs = alpha * means, alpha**2 * covs + sigma**2 * eye
        return dist.MixtureSameFamily(
            dist.Categorical(self.weights), dist.MultivariateNormal(means, covs)
        )

    def _to_eigenbasis(self, v: Tensor) -> Tensor:
        """U_k^T v_k for v shaped [*, K, d]."""
        if self._diagonal:
            return v
        return torch.einsum("kji,...kj->...ki", self._eigenvectors, v)

    def _from_eigenbasis(self, v: Tensor) -> Tensor:
        """U_k v_k for v shaped [*, K, d]."""
        if self._diagonal:
            return v
        return torch.einsum("kij,...kj->...ki", self._eigenvectors, v)

    def _components(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """Log responsibilities log w_k N(x; alpha m_k, alpha^2 C_k + sigma^2 I), shaped [*, K],
        and E[x_0 | x, k], shaped [*, K, d]; alpha and sigma broadcast as [*, 1, 1]."""
        d = self.means.shape[-1]
        z = self._to_eigenbasis(x.unsqueeze(-2) - alpha * self.means)
        variance = alpha**2 * self._eigenvalues + sigma**2  # [*, K, d]
        maha = (z**2 / variance).sum(-1)
        log_normal = -0.5 * (maha + variance.log().sum(-1) + d * math.log(2 * math.pi))
        shift = self._from_eigenbasis(alpha * self._eigenvalues / variance * z)
        return self.weights.log() + log_normal, self.means + shift

    def _isotropic_terms(self, x: Tensor, alpha: Tensor, sigma: Tensor):
        """For components c_k I: log responsibilities [*, K] and the shrinkages
        s_k = alpha c_k / (alpha^2 c_k + sigma^2), with alpha and sigma shaped [*, 1]. The squared
        distances are expanded into products, in double precision against cancellation."""
        d = self.means.shape[-1]
        c = self._eigenvalues[:, 0]
        variance = alpha**2 * c + sigma**2  # [*, K]
        x64, alpha64 = x.double(), alpha.double()
        square = (
            x64.pow(2).sum(-1, keepdim=True)
            - 2 * alpha64 * (x64 @ self.means.double().T)
            + alpha64**2 * self._square_norms
        ).clamp(min=0.0)
        log_normal = -0.5 * (square.to(x.dtype) / variance + d * (2 * math.pi * variance).log())
        return self.weights.log() + log_normal, alpha * c / variance

    def _log_responsibilities(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        """log w_k N(x_t; alpha_t m_k, alpha_t^2 C_k + sigma_t^2 I), shaped [*, K]."""
        alpha, sigma = self.schedule(self._times(x_t, t))
        if self._isotropic:
            return self._isotropic_terms(x_t, alpha[..., None], sigma[..., None])[0]
        return self._components(x_t, alpha[..., None, None], sigma[..., None, None])[0]

    def log_prob(self, x: Tensor, **options) -> Tensor:
        r"""Exact log-density; with ODE ``options`` (see :meth:`PathPrior.log_prob`), the
        probability-flow ODE estimate on the exact denoiser instead."""
        if options:
            return super().log_prob(x, **options)
        self._check_event(x)
        one = torch.ones((), dtype=x.dtype, device=x.device)
        return self._components(x, one, 0 * one)[0].logsumexp(-1)

    def sample(self, sample_shape=(), **sampler_options) -> Tensor:
        r"""Exact draws (a component, then a Gaussian draw in its eigenbasis); with sampler
        options (``sampler``, ``steps``, ``eta``) a path sampler on the exact denoiser."""
        if sampler_options:
            return super().sample(sample_shape, **sampler_options)
        shape = torch.Size(sample_shape) + self.batch_shape
        n = shape.numel()
        with torch.no_grad():
            k = torch.multinomial(self.weights, max(n, 1), replacement=True)[:n]
            z = torch.randn(n, self.means.shape[-1], dtype=self.means.dtype, device=k.device)
            z = z * self._eigenvalues[k].sqrt()
            if not self._diagonal:
                for component in k.unique():
                    chosen = k == component
                    z[chosen] = z[chosen] @ self._eigenvectors[component].T
            return (self.means[k] + z).reshape(*shape, -1)

    def moments(self, num_samples: int = 1024, **sampler_options: Any) -> tuple[Tensor, Tensor]:
        r"""The exact mean :math:`\sum_k w_k m_k` and covariance
        :math:`\sum_k w_k (C_k + (m_k - \mu)(m_k - \mu)^\top)` (``num_samples`` and
        ``sampler_options`` are unused)."""
        mean = self.weights @ self.means
        centred = self.means - mean
        spread = self.covs + centred.unsqueeze(-1) * centred.unsqueeze(-2)
        return mean, (self.weights[:, None, None] * spread).sum(0)

    def denoise(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        r"""The exact denoiser :math:`E[x \mid x_t]`."""
        alpha, sigma = self.schedule(self._times(x_t, t))
        if self._isotropic:  # sum_k r_k ((1 - alpha s_k) m_k + s_k x_t)
            alpha, sigma = alpha[..., None], sigma[..., None]
            log_r, shrink = self._isotropic_terms(x_t, alpha, sigma)
            r = log_r.softmax(-1)
            x0 = (r * (1 - alpha * shrink)) @ self.means + (r * shrink).sum(-1, True) * x_t
        else:
            log_r, means = self._components(x_t, alpha[..., None, None], sigma[..., None, None])
            x0 = (log_r.softmax(-1).unsqueeze(-1) * means).sum(-2)
        return count_evaluation(x0, self.event_dim)

    def denoise_covariance(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        r"""The exact covariance :math:`\mathrm{Cov}[x \mid x_t]`, shaped ``[*batch, d, d]``:

        .. math:: \sum_k r_k(x_t) \left(C_k - \alpha_t^2 C_k (\alpha_t^2 C_k + \sigma_t^2
            I)^{-1} C_k + (m_k(x_t) - D(x_t)) (m_k(x_t) - D(x_t))^\top\right),

        with :math:`m_k(x_t) = E[x \mid x_t, k]` and :math:`D` the denoiser; it equals
        Tweedie's second-order formula :math:`(\sigma_t^2 / \alpha_t)\, \partial D / \partial
        x_t`. The covariance of the exact reverse transition :math:`p(x_s \mid x_t)` adds
        :math:`a^2` times it to the ancestral kernel's :math:`c^2 I` (a ground truth for the
        discretisation error of path samplers; no denoiser evaluation is counted).
        """
        alpha, sigma = self.schedule(self._times(x_t, t))
        alpha, sigma = alpha[..., None, None], sigma[..., None, None]
        log_r, means = self._components(x_t, alpha, sigma)
        r = log_r.softmax(-1)
        within = self._eigenvalues * sigma**2 / (alpha**2 * self._eigenvalues + sigma**2)
        if self._diagonal:
            covs = torch.diag_embed(within)
        else:
            covs = (self._eigenvectors * within.unsqueeze(-2)) @ self._eigenvectors.mT
        centred = means - (r.unsqueeze(-1) * means).sum(-2, keepdim=True)
        spread = covs + centred.unsqueeze(-1) * centred.unsqueeze(-2)
        return (r[..., None, None] * spread).sum(-3)

    def component_log_probs(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        r"""The exact noise-conditional classifier of the components,
        :math:`\log p(k \mid x_t) = \log r_k(x_t)`, shaped ``[*batch, K]``: a ground truth for
        classifier guidance."""
        return self._log_responsibilities(x_t, t).log_softmax(-1)

    def log_prob_t(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        r"""The exact log-density :math:`\log p_t(x_t)` of the noised mixture."""
        return self._log_responsibilities(x_t, t).logsumexp(-1)
