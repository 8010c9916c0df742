r"""Distances between sample sets, for comparing posterior draws with a reference."""

from __future__ import annotations

__all__ = ["sliced_wasserstein"]

import torch
from torch import Tensor


def sliced_wasserstein(
    x: Tensor, y: Tensor, num_projections: int = 256, seed: int | None = 0
) -> Tensor:
    r"""Sliced 2-Wasserstein distance between two sample sets.

    .. math:: \mathrm{SW}_2(p, q) = \Big(\mathbb{E}_{\theta \sim U(S^{d-1})}
        W_2^2(\theta_\# p, \theta_\# q)\Big)^{1/2},

    with each one-dimensional :math:`W_2` computed from sorted projections (quantiles are
    matched by linear interpolation when the sample sizes differ).

    Arguments:
        x: Samples, shaped ``[N, d]`` (or ``[N]``).
        y: Samples, shaped ``[M, d]`` (or ``[M]``).
        num_projections: Random directions :math:`\theta`.
        seed: Seed of the directions (None for the global generator).

    Returns:
        The distance, a scalar tensor.

    References:
        | Sliced and Radon Wasserstein Barycenters of Measures (Bonneel et al., 2015)
    """
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1).to(x)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y have dimensions {x.shape[1]} and {y.shape[1]}")
    generator = None if seed is None else torch.Generator(x.device).manual_seed(seed)
    theta = torch.randn(x.shape[1], num_projections, generator=generator, device=x.device)
    theta = theta.to(x.dtype)
    theta = theta / theta.norm(dim=0, keepdim=True)
    qx, qy = (x @ theta).sort(0).values, (y @ theta).sort(0).values
    if len(qx) != len(qy):
        n = max(len(qx), len(qy))
        levels = torch.linspace(0, 1, n, device=x.device, dtype=x.dtype)
        qx, qy = _quantiles(qx, levels), _quantiles(qy, levels)
    return ((qx - qy) ** 2).mean().sqrt()


def _quantiles(sorted_values: Tensor, levels: Tensor) -> Tensor:
    position = levels * (len(sorted_values) - 1)
    lower = position.floor().long().clamp(max=len(sorted_values) - 2)
    frac = (position - lower).unsqueeze(-1)
    return sorted_values[lower] * (1 - frac) + sorted_values[lower + 1] * frac
