r"""Gaussian log-densities of batches of points: isotropic or diagonal, from a Cholesky factor,
or from the Mahalanobis square and log-determinant; and a stable Cholesky factorisation.

A low-level module (it imports nothing of condgen)."""

from __future__ import annotations

__all__ = ["cholesky_log_prob", "log_density", "normal_log_prob", "stable_cholesky"]

import math

import torch
from torch import Tensor

_LOG_2PI = math.log(2 * math.pi)


def log_density(square: Tensor, log_det: Tensor | float, dim: int) -> Tensor:
    r""":math:`\log \mathcal{N}(r; 0, S) = -\frac12 (r^\top S^{-1} r + \log |S| + m \log 2\pi)`
    from the Mahalanobis square :math:`r^\top S^{-1} r`, the log-determinant :math:`\log |S|`
    and the dimension :math:`m`."""
    return -0.5 * (square + log_det + dim * _LOG_2PI)


def normal_log_prob(x: Tensor, mean: Tensor | float, std: Tensor, batch_dims: int = 1) -> Tensor:
    r""":math:`\log \mathcal{N}(x; \mu, \mathrm{diag}(c^2))` of each point, summed over all but
    the first ``batch_dims`` dimensions of :math:`x - \mu`.

    Arguments:
        x: Points shaped ``[*batch, *event]`` (or broadcastable against ``mean``).
        mean: :math:`\mu`, broadcastable against ``x``.
        std: :math:`c`, a scalar tensor or one broadcastable to ``event``.
        batch_dims: The number of batch dimensions of ``x``.
    """
    residual = x - mean
    z = (residual / std).flatten(batch_dims)
    log_std = torch.as_tensor(std, dtype=z.dtype, device=z.device).log()
    log_det = 2 * log_std.expand(residual.shape[batch_dims:]).sum()
    return log_density(z.pow(2).sum(-1), log_det, z.shape[-1])


def cholesky_log_prob(residual: Tensor, chol: Tensor) -> Tensor:
    r""":math:`\log \mathcal{N}(r; 0, L L^\top)` for residuals shaped ``[N, m]`` and one Cholesky
    factor :math:`L` shaped ``[m, m]`` or one per residual ``[N, m, m]``."""
    z = torch.linalg.solve_triangular(chol, residual.unsqueeze(-1), upper=False).squeeze(-1)
    log_det = 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return log_density(z.pow(2).sum(-1), log_det, residual.shape[-1])


def stable_cholesky(matrix: Tensor) -> Tensor:
    r"""Cholesky factors of a batch of covariances ``[..., m, m]``, symmetrised and with a
    jitter of :math:`10^{-8}` times their mean variance."""
    matrix = (matrix + matrix.mT) / 2
    jitter = 1e-8 * matrix.diagonal(dim1=-2, dim2=-1).mean(-1)[..., None, None]
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    return torch.linalg.cholesky(matrix + jitter * eye)
