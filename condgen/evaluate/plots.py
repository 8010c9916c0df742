r"""Plots of posterior draws beside a reference."""

from __future__ import annotations

__all__ = ["plot_draws"]

import math
from collections.abc import Mapping

import matplotlib.pyplot as plt
from torch import Tensor

from ..posterior import Posterior


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
