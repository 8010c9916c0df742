r"""Distances between sample sets, for comparing posterior draws with a reference."""

from __future__ import annotations

__all__ = [
    "c2st",
    "energy_distance",
    "mmd",
    "moment_errors",
    "sbibm_c2st",
    "sliced_wasserstein",
]

import numpy as np
import torch
from torch import Tensor, nn

from .._optim import adamw
from .._random import check_seed


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
    generator = None if seed is None else torch.Generator(x.device).manual_seed(check_seed(seed))
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


def _flat(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1).to(x)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y have dimensions {x.shape[1]} and {y.shape[1]}")
    return x, y


def _off_diagonal_mean(matrix: Tensor) -> Tensor:
    n = len(matrix)
    return (matrix.sum() - matrix.diagonal().sum()) / (n * (n - 1))


def energy_distance(x: Tensor, y: Tensor) -> Tensor:
    r"""Energy distance between two sample sets (unbiased U-statistics):

    .. math:: \mathcal{E}(p, q) = 2 E\|X - Y\| - E\|X - X'\| - E\|Y - Y'\|,

    zero if and only if :math:`p = q` (Szekely and Rizzo, 2013).

    Arguments:
        x: Samples, shaped ``[N, d]`` (or ``[N]``).
        y: Samples, shaped ``[M, d]`` (or ``[M]``).

    Returns:
        The distance, a scalar tensor (its unbiased estimate can be slightly negative).
    """
    x, y = _flat(x, y)
    xy = torch.cdist(x, y).mean()
    return 2 * xy - _off_diagonal_mean(torch.cdist(x, x)) - _off_diagonal_mean(torch.cdist(y, y))


def mmd(x: Tensor, y: Tensor, bandwidth: float | None = None) -> Tensor:
    r"""Squared maximum mean discrepancy with a Gaussian kernel (unbiased U-statistics):

    .. math:: \mathrm{MMD}^2 = E k(X, X') + E k(Y, Y') - 2 E k(X, Y), \quad
        k(a, b) = \exp(-\|a - b\|^2 / (2 h^2)).

    Arguments:
        x: Samples, shaped ``[N, d]`` (or ``[N]``).
        y: Samples, shaped ``[M, d]`` (or ``[M]``).
        bandwidth: The bandwidth :math:`h`; by default the median heuristic, the median
            distance between the pooled samples (Gretton et al., 2012).

    Returns:
        The squared MMD, a scalar tensor (its unbiased estimate can be slightly negative).

    References:
        | A Kernel Two-Sample Test (Gretton et al., 2012)
    """
    x, y = _flat(x, y)
    if bandwidth is None:
        pooled = torch.cat([x, y])[:2000]
        distances = torch.cdist(pooled, pooled)
        bandwidth = float(distances[distances > 0].median())

    def kernel(a: Tensor, b: Tensor) -> Tensor:
        return torch.exp(-torch.cdist(a, b).pow(2) / (2 * bandwidth**2))

    return (
        _off_diagonal_mean(kernel(x, x))
        + _off_diagonal_mean(kernel(y, y))
        - 2 * kernel(x, y).mean()
    )


def c2st(x: Tensor, y: Tensor, folds: int = 5, epochs: int = 300, seed: int = 0) -> Tensor:
    r"""Classifier two-sample test: the cross-validated accuracy of a classifier that tells
    :math:`x` from :math:`y`; 0.5 when the distributions are equal, 1 when they are disjoint.

    As in the simulation-based-inference benchmarks (Lueckmann et al., 2021): the inputs are
    standardised with the statistics of ``x``, the classifier is an MLP (two hidden layers of
    ``10 d`` units, ReLU) trained with Adam on full batches, and the accuracy is averaged over
    ``folds`` stratified folds. Equal sample sizes are expected.

    Arguments:
        x: Samples, shaped ``[N, d]``.
        y: Samples, shaped ``[N, d]``.
        folds: Cross-validation folds.
        epochs: Training epochs per fold.
        seed: Seed of the folds and the classifier.

    Returns:
        The accuracy, a scalar tensor in :math:`[0, 1]`.

    References:
        | Benchmarking Simulation-Based Inference (Lueckmann et al., 2021)
        | https://arxiv.org/abs/2101.04653
    """
    x, y = _flat(x, y)
    x, y = x.float(), y.float()
    mean, std = x.mean(0), x.std(0).clamp(min=1e-12)
    x, y = (x - mean) / std, (y - mean) / std
    generator = torch.Generator().manual_seed(check_seed(seed))
    index = [torch.randperm(len(v), generator=generator) % folds for v in (x, y)]
    d = x.shape[1]
    accuracies = []

    def split(in_fold: bool) -> tuple[Tensor, Tensor]:
        chosen = [(i == fold) == in_fold for i in index]
        inputs = torch.cat([x[chosen[0]], y[chosen[1]]])
        labels = torch.cat([torch.zeros(int(chosen[0].sum())), torch.ones(int(chosen[1].sum()))])
        return inputs, labels

    for fold in range(folds):
        train, labels = split(False)
        test, truth = split(True)
        with torch.random.fork_rng():
            torch.manual_seed(seed + fold)
            classifier = nn.Sequential(
                nn.Linear(d, 10 * d),
                nn.ReLU(),
                nn.Linear(10 * d, 10 * d),
                nn.ReLU(),
                nn.Linear(10 * d, 1),
            )
            optimizer = adamw(classifier.parameters(), lr=1e-2)
            with torch.enable_grad():
                for _ in range(epochs):
                    loss = nn.functional.binary_cross_entropy_with_logits(
                        classifier(train).squeeze(-1), labels
                    )
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
            with torch.no_grad():
                predicted = (classifier(test).squeeze(-1) > 0).float()
        accuracies.append((predicted == truth).float().mean())
    return torch.stack(accuracies).mean()


def sbibm_c2st(reference: Tensor, draws: Tensor, seed: int = 1, folds: int = 5) -> float:
    r"""sbibm's classifier two-sample test: the cross-validated accuracy of scikit-learn's MLP
    classifier telling ``draws`` from ``reference``, as ``sbibm.metrics.c2st`` (sbibm 1.1.0)
    computes it with its defaults; 0.5 when the two cannot be told apart, 1 when disjoint.

    Both samples are z-scored by the reference's mean and (unbiased) standard deviation, in
    float32. The classifier is ``MLPClassifier`` (ReLU, two hidden layers of :math:`10 d`
    units, Adam, ``max_iter=10000``, ``random_state=seed``), scored by ``cross_val_score``'s
    accuracy over a shuffled ``KFold`` (``folds`` folds, ``random_state=seed``), averaged.
    Unlike :func:`c2st` (the same recipe in torch), the training stops by scikit-learn's
    tolerance rule, as in the published benchmark.

    With :math:`N` draws on each side, the accuracy of two equal distributions is about
    :math:`0.5 \pm 0.5 / \sqrt{2N}` plus the classifier's overfitting (about +0.01 at
    :math:`N = 1000`).

    Arguments:
        reference: Reference draws, shaped ``[N, d]`` (or ``[N, ...]``, flattened).
        draws: Draws to score, shaped ``[M, d]``.
        seed: The classifier's and the folds' random state (sbibm's default 1).
        folds: Cross-validation folds.

    Returns:
        The mean accuracy.

    Raises:
        ImportError: If scikit-learn is not installed.

    Example:
        >>> import torch
        >>> from condgen.evaluate import sbibm_c2st
        >>> x, y = torch.randn(200, 2), torch.randn(200, 2) + 5
        >>> sbibm_c2st(x, y) > 0.95
        True

    References:
        | Benchmarking Simulation-Based Inference (Lueckmann et al., 2021)
        | https://arxiv.org/abs/2101.04653
    """
    try:
        from sklearn.model_selection import KFold, cross_val_score
        from sklearn.neural_network import MLPClassifier
    except ImportError as error:
        raise ImportError(
            "sbibm_c2st needs scikit-learn: pip install scikit-learn (or use condgen's c2st)"
        ) from error
    reference, draws = _flat(reference.detach().cpu().float(), draws.detach().cpu().float())
    mean, std = reference.mean(0), reference.std(0)
    x, y = ((reference - mean) / std).numpy(), ((draws - mean) / std).numpy()
    d = x.shape[1]
    classifier = MLPClassifier(
        activation="relu",
        hidden_layer_sizes=(10 * d, 10 * d),
        max_iter=10_000,
        solver="adam",
        random_state=seed,
    )
    data = np.concatenate((x, y))
    target = np.concatenate((np.zeros(len(x)), np.ones(len(y))))
    shuffle = KFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_score(classifier, data, target, cv=shuffle, scoring="accuracy")
    return float(np.mean(scores))


def moment_errors(
    x: Tensor,
    reference: Tensor,
    weights: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Per-coordinate errors of the first two moments, in units of the reference.

    .. math:: e_j = (\hat m_j - m_j) / s_j, \qquad r_j = \hat s_j / s_j,

    with :math:`m_j, s_j` the reference mean and standard deviation of coordinate :math:`j`
    and :math:`\hat m_j, \hat s_j` those of ``x`` (weighted by ``weights`` if given). Exact
    draws give :math:`e_j \approx \mathcal{N}(0, 1/N + 1/M)` and :math:`r_j \approx 1 \pm
    1/\sqrt{2N}` for Gaussian marginals.

    Arguments:
        x: Samples, shaped ``[N, d]`` (or ``[N, ...]``, flattened).
        reference: Reference samples, shaped ``[M, d]``.
        weights: Optional normalised weights of ``x``, shaped ``[N]``.

    Returns:
        The standardised mean errors :math:`e` and the standard deviation ratios :math:`r`,
        each shaped ``[d]``.
    """
    x, reference = _flat(x.double(), reference.double())
    if weights is None:
        weights = torch.full((len(x),), 1 / len(x), dtype=x.dtype, device=x.device)
    weights = weights.to(x)
    mean = weights @ x
    sd = (weights @ (x - mean) ** 2).sqrt()
    ref_mean, ref_sd = reference.mean(0), reference.std(0).clamp(min=1e-300)
    return (mean - ref_mean) / ref_sd, sd / ref_sd
