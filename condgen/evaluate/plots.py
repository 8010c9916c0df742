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
    coordinates at a time, over the reference draws in grey.

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
    ref = reference.reshape(len(reference), -1)[:max_points, list(dims)].cpu()
    for ax, (label, draws) in zip(
        axes.flat,
        [("exact", None), *((k, p.resample().flatten()[site]) for k, p in posteriors.items())],
        strict=False,
    ):
        ax.scatter(ref[:, 0], ref[:, 1], s=2, color="0.75", label="exact")
        if draws is not None:
            points = draws.reshape(len(draws), -1)[:max_points, list(dims)].cpu()
            ax.scatter(points[:, 0], points[:, 1], s=2, color="C0", alpha=0.6)
        ax.set_title(label)
    for ax in list(axes.flat)[panels:]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
