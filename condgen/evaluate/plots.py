r"""The figures of condgen.evaluate: draws beside a reference, calibration ranks, digit images."""

from __future__ import annotations

__all__ = ["plot_calibration", "plot_digits", "plot_draws"]

import math
from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor

from ..posterior import Posterior
from .ranks import check_alpha, coordinate_label, ecdf_points, rank_columns, rank_coverage


def plot_draws(
    posteriors: Mapping[str, Posterior],
    reference: Tensor,
    site: str,
    *,
    dims: tuple[int, int] = (0, 1),
    max_points: int = 2000,
    title: str = "",
) -> plt.Figure:
    r"""Scatter plots of each method's draws (resampled if weighted) of a site, two
    coordinates at a time, over the reference draws in grey (histograms for a scalar site).

    Arguments:
        posteriors: Posteriors by label.
        reference: Reference draws of the site, shaped ``[N, *site.shape]``.
        site: The site to plot.
        dims: The two coordinates (of the flattened site) to plot.
        max_points: At most this many points per panel.
        title: A title over the figure.

    Returns:
        The figure (save it with ``fig.savefig(path)``).
    """
    panels = len(posteriors) + 1
    cols = min(panels, 3)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.2 * cols, 3.2 * rows), sharex=True, sharey=True, squeeze=False
    )
    flat = reference.reshape(len(reference), -1)
    dims = list(dims) if flat.shape[1] > 1 else [0]
    ref = flat[:max_points, dims].cpu()
    for ax, (label, draws) in zip(
        axes.flat,
        [("reference", None), *((k, p.resample().flatten()[site]) for k, p in posteriors.items())],
        strict=False,
    ):
        points = None if draws is None else draws.reshape(len(draws), -1)[:max_points, dims]
        if len(dims) == 1:  # a scalar site: histograms
            ax.hist(ref[:, 0], bins=50, density=True, color="0.75")
            if points is not None:
                ax.hist(points[:, 0].cpu(), bins=50, density=True, color="C0", alpha=0.6)
        else:
            ax.scatter(ref[:, 0], ref[:, 1], s=2, color="0.75")
            if points is not None:
                ax.scatter(points[:, 0].cpu(), points[:, 1].cpu(), s=2, color="C0", alpha=0.6)
        ax.set_title(label)
    for ax in list(axes.flat)[panels:]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_calibration(
    ranks: Mapping[str, Tensor],
    num_samples: int,
    *,
    method: str = "",
    site: str | None = None,
    alpha: float = 0.01,
    max_panels: int = 16,
) -> plt.Figure:
    r"""ECDF-difference plots of calibration ranks with simultaneous bands, and the coverage
    curve (see :meth:`~condgen.evaluate.Calibration.plot`, which draws it).

    Each coordinate gets a panel with the ECDF of its normalised ranks minus the uniform
    CDF, and the simultaneous band of ``arviz.plot_ecdf`` (``confidence_bands=
    "optimized"``, Säilynoja et al., 2022) at probability :math:`1 - \alpha / D`, the
    Bonferroni level over the :math:`D` coordinates of all sites. A last panel draws the
    expected coverage against the credible level (mean over coordinates in black, each
    coordinate faint), the diagonal, and the 95% binomial band of one coordinate's coverage
    under calibration.

    Arguments:
        ranks: Ranks by site in :math:`\{0, \dots, L\}`, shaped
            ``[num_simulations, *site.shape]``.
        num_samples: The number :math:`L` of posterior draws per simulation.
        method: The calibrated method, for the title.
        site: The site to plot; by default all sites.
        alpha: The family-wise level of the bands.
        max_panels: At most this many coordinates get an ECDF panel (the first ones).

    Returns:
        The figure (save it with ``fig.savefig(path)``).
    """
    import arviz as az
    from scipy.stats import uniform

    if not hasattr(az, "plot_ecdf"):  # ArviZ 1.x: arviz-plots' plot_ecdf_pit instead
        raise ImportError(
            f"plot_calibration draws its bands with ArviZ 0.x's plot_ecdf, which ArviZ "
            f"{az.__version__} does not have: pip install 'arviz<1' for this figure (the ranks "
            "and coverage of a Calibration need no plotting)"
        )
    check_alpha(alpha)
    labels, columns = rank_columns(ranks, site)
    num_coordinates = sum(math.prod(v.shape[1:]) for v in ranks.values())
    num_simulations = len(columns)
    labels, columns = labels[:max_panels], columns[:, :max_panels]
    panels = len(labels) + 1
    cols = min(panels, 4)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    bins = num_samples + 1
    points = (ecdf_points(num_samples) + 1) / bins
    for ax, (name, index), column in zip(axes.flat, labels, columns.T, strict=False):
        az.plot_ecdf(
            (column + 0.5) / bins,  # ECDF at (j + 1) / (L + 1) counts the ranks <= j
            eval_points=points,
            cdf=uniform(0, 1).cdf,
            difference=True,
            confidence_bands="optimized",
            ci_prob=1 - alpha / num_coordinates,
            ax=ax,
        )
        ax.axhline(0.0, color="0.5", lw=0.5)
        ax.set_title(coordinate_label(name, index))
        ax.set_xlabel("normalised rank")
        ax.set_ylabel("ECDF difference")
    ax = axes.flat[len(labels)]
    levels = np.linspace(0, 1, 41)
    coverage = rank_coverage(columns, levels, num_samples)
    spread = 1.96 * np.sqrt(levels * (1 - levels) / num_simulations)
    ax.fill_between(levels, levels - spread, levels + spread, color="0.85", lw=0)
    ax.plot([0, 1], [0, 1], color="0.4", ls="--", lw=1)
    if coverage.shape[1] > 1:
        ax.plot(levels, coverage, color="C0", alpha=0.3, lw=0.8)
    ax.plot(levels, coverage.mean(1), color="k", lw=1.5)
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="credible level",
        ylabel="expected coverage",
        title="coverage",
    )
    for extra in axes.flat[panels:]:
        extra.remove()
    fig.suptitle(f"SBC of {method}: {num_simulations} simulations")
    fig.tight_layout()
    return fig


def plot_digits(
    truth: Tensor,
    observation: Tensor,
    posteriors: Mapping[str, Posterior],
    num: int = 8,
    *,
    reference: Tensor | None = None,
    title: str = "",
) -> plt.Figure:
    r"""Pictures of a clean image, its observation and draws of each method, site ``"x"``.

    The first row shows the truth and the observation (unobserved pixels, NaN, in
    blue-grey); each further row is one method: the mean of its draws (weighted for
    weighted posteriors), then ``num`` draws (resampled when weighted). Pixels are drawn
    in grey levels from white (:math:`-1`, background) to black (:math:`+1`, ink).

    Arguments:
        truth: The clean image, any shape with as many pixels as ``observation``.
        observation: The observed image, e.g. shaped ``[8, 8]``, NaN where unobserved.
        posteriors: Posteriors of the image's site ``"x"``, by label.
        num: Draws shown per method.
        reference: Optional reference draws ``[N, *image]``, shown as a row above the
            methods.
        title: A title over the figure.

    Returns:
        The figure (save it with ``fig.savefig(path)``).
    """
    rows: list[tuple[str, Tensor, Tensor]] = []
    if reference is not None:
        reference = reference.reshape(len(reference), -1)
        rows.append(("reference", reference.mean(0), reference))
    for label, posterior in posteriors.items():
        mean, _ = posterior.moments("x")
        rows.append((label, mean.reshape(-1), posterior.resample().flatten()["x"]))
    cols = num + 1
    fig, axes = plt.subplots(
        1 + len(rows), cols, figsize=(0.95 * cols, 1.05 * (1 + len(rows))), squeeze=False
    )
    cmap = plt.get_cmap("gray_r").with_extremes(bad="lightsteelblue")

    def show(ax, image: Tensor, label: str = "") -> None:
        image = image.detach().reshape(observation.shape).double().cpu().numpy()
        ax.imshow(image, cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
        if label:
            ax.set_title(label, fontsize=8)

    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    show(axes[0, 0], truth, "truth")
    show(axes[0, 1], observation, "observed")
    for ax in axes[0, 2:]:
        ax.axis("off")
    generator = torch.Generator().manual_seed(0)
    for row, (label, mean, draws) in enumerate(rows, start=1):
        show(axes[row, 0], mean, "mean" if row == 1 else "")
        axes[row, 0].set_ylabel(label, fontsize=8)
        chosen = torch.randperm(len(draws), generator=generator)[:num]
        for col in range(num):
            if col < len(chosen):
                show(axes[row, col + 1], draws[chosen[col]])
            else:
                axes[row, col + 1].axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
