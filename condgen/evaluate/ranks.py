r"""Statistics of the ranks that simulation-based calibration gives: coverage of the central
credible intervals and an exact ECDF test of discrete uniformity."""

from __future__ import annotations

__all__ = [
    "check_alpha",
    "coordinate_label",
    "ecdf_points",
    "ecdf_uniformity_test",
    "rank_columns",
    "rank_coverage",
]

import math
from collections.abc import Mapping

import numpy as np
from scipy.special import gammaln
from scipy.stats import binom
from torch import Tensor

_MAX_EVAL_POINTS = 100


def check_alpha(alpha: float) -> None:
    r"""Raises a :class:`ValueError` unless ``alpha`` is a significance level in :math:`(0, 1)`."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")


def rank_columns(
    ranks: Mapping[str, Tensor], site: str | None = None
) -> tuple[list[tuple[str, tuple]], np.ndarray]:
    r"""The ranks of every coordinate of the sites (or of ``site`` alone) as columns.

    Arguments:
        ranks: Ranks by site, shaped ``[num_simulations, *site.shape]``.
        site: One site to keep; by default all of them.

    Returns:
        The ``(site, index)`` of each coordinate, and the integer ranks shaped
        ``[num_simulations, num_coordinates]``.
    """
    if site is not None and site not in ranks:
        raise ValueError(f"site must be one of {list(ranks)}, got {site!r}")
    names = [site] if site is not None else list(ranks)
    labels, columns = [], []
    for name in names:
        value = ranks[name]
        shape = tuple(value.shape[1:])
        labels += [(name, index) for index in np.ndindex(*shape)]
        columns.append(value.reshape(len(value), -1).cpu().numpy().astype(np.int64))
    return labels, np.concatenate(columns, axis=1)


def coordinate_label(name: str, index: tuple) -> str:
    r"""The label of one coordinate of a site: ``"x[0, 1]"``, or ``"x"`` for a scalar site."""
    return f"{name}[{', '.join(map(str, index))}]" if index else name


def rank_coverage(ranks: np.ndarray, levels: np.ndarray, num_samples: int) -> np.ndarray:
    r"""The expected coverage :math:`\hat c(\alpha)` of the central credible intervals (see
    :meth:`~condgen.evaluate.Calibration.expected_coverage`).

    Arguments:
        ranks: Integer ranks in :math:`\{0, \dots, L\}`, shaped ``[N, D]``.
        levels: The credible levels :math:`\alpha`, shaped ``[K]``.
        num_samples: :math:`L`.

    Returns:
        The coverage of each level and coordinate, shaped ``[K, D]``.
    """
    # the truth's randomised quantile u = (r + V) / (L + 1), V ~ U(0, 1), is uniform on
    # (0, 1) for a calibrated method; the truth lies in the central interval of level a
    # when |u - 1/2| <= a / 2, whose probability given r is integrated over V exactly
    bins = num_samples + 1
    lower, upper = (1 - levels) / 2, (1 + levels) / 2
    left, right = ranks / bins, (ranks + 1) / bins
    inside = np.minimum(right[..., None], upper) - np.maximum(left[..., None], lower)
    return (inside.clip(min=0) * bins).mean(0).T


def ecdf_points(num_samples: int) -> np.ndarray:
    r"""The ranks :math:`j_k` at which the ECDF is evaluated: all of :math:`0, \dots, L - 1`,
    or 100 evenly spaced quantiles."""
    bins = num_samples + 1
    k = np.arange(1, min(num_samples, _MAX_EVAL_POINTS) + 1)
    return np.unique((bins * k) // (len(k) + 1) - 1).clip(min=0)


def ecdf_uniformity_test(ranks: np.ndarray, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    r"""The ECDF band test of discrete uniformity (see
    :meth:`~condgen.evaluate.Calibration.uniformity`).

    Arguments:
        ranks: Integer ranks in :math:`\{0, \dots, L\}`, shaped ``[N, D]``.
        num_samples: :math:`L`.

    Returns:
        The statistic :math:`\gamma` and its exact p-value, both shaped ``[D]``.
    """
    ranks = np.asarray(ranks, dtype=np.int64)
    n, _ = ranks.shape
    grid = ecdf_points(num_samples)
    z = (grid + 1) / (num_samples + 1)
    counts = np.stack(
        [np.bincount(col, minlength=num_samples + 1).cumsum()[grid] for col in ranks.T], 1
    )  # [K, D]
    c = np.arange(n + 1)
    tails = np.minimum(binom.cdf(c, n, z[:, None]), binom.sf(c - 1, n, z[:, None]))
    tails = np.minimum(1.0, 2 * tails)  # [K, N + 1]
    gamma = tails[np.arange(len(grid))[:, None], counts].min(0)  # [D]

    # P(all k: tails_k(C_k) > gamma) by the forward recursion over C_k
    log_factorial = gammaln(c + 1.0)  # log m!
    remaining = n - c[:, None]  # N - C_{k-1}
    step = c[None, :] - c[:, None]  # C_k - C_{k-1}
    valid = (step >= 0) & (step <= remaining)
    step = np.where(valid, step, 0)
    log_binomial = log_factorial[remaining] - log_factorial[step] - log_factorial[remaining - step]
    prob = np.zeros((len(gamma), n + 1))
    prob[:, 0] = 1.0
    z_previous = 0.0
    for k, z_k in enumerate(z):
        p = (z_k - z_previous) / (1 - z_previous)
        log_pmf = log_binomial + step * math.log(p) + (remaining - step) * math.log1p(-p)
        transition = np.where(valid, np.exp(log_pmf), 0.0)  # [C_{k-1}, C_k]
        prob = (prob @ transition) * (tails[k][None, :] > gamma[:, None])
        z_previous = z_k
    p_value = np.clip(1.0 - prob.sum(1), 0.0, 1.0)
    return gamma, p_value
