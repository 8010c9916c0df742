r"""Resampling of weighted particles: the one resampler of the SMC methods and the Posterior.

A low-level module (it imports nothing of condgen)."""

from __future__ import annotations

__all__ = ["systematic_resample"]

import torch
from torch import Tensor


def systematic_resample(
    log_weights: Tensor, num_samples: int, generator: torch.Generator | None = None
) -> Tensor:
    r"""Draws ancestor indices by systematic resampling.

    With normalised weights :math:`w_i` and one uniform :math:`u \sim U(0, 1)`, the indices
    are :math:`\{i : \sum_{j < i} w_j \le (k + u) / n < \sum_{j \le i} w_j\}` for
    :math:`k = 0, \dots, n - 1`: unbiased, with less variance than multinomial resampling.

    Arguments:
        log_weights: Unnormalised log-weights, shaped ``[N]``.
        num_samples: The number :math:`n` of indices to draw.
        generator: The generator of :math:`u` (default: torch's global one).

    Returns:
        The indices, shaped ``[n]``.

    Example:
        >>> import torch
        >>> from condgen.posterior import systematic_resample
        >>> systematic_resample(torch.tensor([0.5, 0.25, 0.25]).log(), 4)
        tensor([0, 0, 1, 2])
    """
    weights = torch.softmax(log_weights.detach().double(), dim=0)
    cdf = weights.cumsum(0)
    cdf[-1] = 1.0
    u = torch.rand((), dtype=cdf.dtype, device=cdf.device, generator=generator)
    points = (torch.arange(num_samples, dtype=cdf.dtype, device=cdf.device) + u) / num_samples
    return torch.searchsorted(cdf, points).clamp(max=len(weights) - 1)
