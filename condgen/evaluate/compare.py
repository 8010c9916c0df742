r"""Side-by-side comparison of conditioning methods against reference posterior draws."""

from __future__ import annotations

__all__ = ["Report", "compare", "posterior_metrics"]

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import arviz as az
import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..conditioning import condition
from ..methods import get as get_method
from ..methods.base import Method
from ..posterior import Posterior
from ..problem import Problem
from .metrics import sliced_wasserstein

_COLUMNS = {
    "method": "{}",
    "family": "{}",
    "time_s": "{:.2f}",
    "nfe": "{:.0f}",
    "mean_err": "{:.3f}",
    "sd_ratio": "{:.3f}",
    "sw": "{:.4f}",
    "ess": "{:.0f}",
    "rhat": "{:.3f}",
}


def _stack(values: Mapping[str, Tensor], names: Sequence[str]) -> Tensor:
    return torch.cat([values[k].reshape(len(values[k]), -1).double() for k in names], dim=-1)


def posterior_metrics(posterior: Posterior, reference: Mapping[str, Tensor]) -> dict[str, float]:
    r"""Measures posterior draws against reference draws of the same sites.

    Metrics, over all latent coordinates :math:`j` with reference mean :math:`m_j` and
    standard deviation :math:`s_j`:

    * ``mean_err``: :math:`\max_j |\hat m_j - m_j| / s_j`, the worst standardised mean error;
    * ``sd_ratio``: the mean over :math:`j` of :math:`\hat s_j / s_j` (1 is right, below 1
      under-dispersed);
    * ``sw``: the sliced 2-Wasserstein distance between the draws and the reference;
    * ``ess``: the bulk effective sample size from ArviZ (minimum over coordinates), or the
      importance ESS of the weights for weighted posteriors;
    * ``rhat``: the largest rank-normalised R-hat (NaN with a single chain).

    Weighted posteriors are measured through their weighted moments and resampled draws.
    """
    names = list(posterior.problem.latent_sites)
    missing = sorted(set(names) - set(reference))
    if missing:
        raise ValueError(f"the reference has no draws for the sites {missing}")
    ref = _stack(reference, names).cpu()
    moments = [posterior.moments(name) for name in names]
    mean = torch.cat([m.flatten() for m, _ in moments]).cpu()
    sd = torch.cat([s.flatten() for _, s in moments]).cpu()
    ref_sd = ref.std(0)
    resampled = _stack(posterior.resample().flatten(), names)
    if posterior.log_weights is None:
        idata = posterior.to_arviz()
        ess = _extreme(az.ess(idata, method="bulk"), min)
        rhat = _extreme(az.rhat(idata), max) if posterior.num_chains > 1 else math.nan
    else:
        ess, rhat = float(posterior.stats.get("ess", math.nan)), math.nan
    return {
        "mean_err": float(((mean - ref.mean(0)).abs() / ref_sd).max()),
        "sd_ratio": float((sd / ref_sd).mean()),
        "sw": float(sliced_wasserstein(resampled, ref.to(resampled.device))),
        "ess": ess,
        "rhat": rhat,
    }


def _extreme(dataset, reduce: Callable) -> float:
    return float(reduce(reduce(v.values.ravel()) for v in dataset.data_vars.values()))


class Report:
    r"""The result of :func:`compare`: one row per method.

    Attributes:
        table: A :class:`pandas.DataFrame` with the columns method, family, time_s, nfe and,
            with a reference, mean_err, sd_ratio, sw, ess and rhat.
        posteriors: The posterior of each method, by row label.
    """

    def __init__(self, table: pd.DataFrame, posteriors: dict[str, Posterior], title: str = ""):
        self.table, self.posteriors, self.title = table, posteriors, title

    def to_markdown(self) -> str:
        r"""The table as a Markdown (GitHub) table."""
        columns = [c for c in _COLUMNS if c in self.table.columns]
        rows = [[_format(c, row[c]) for c in columns] for _, row in self.table.iterrows()]
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)

    def __str__(self) -> str:
        columns = [c for c in _COLUMNS if c in self.table.columns]
        rows = [[_format(c, row[c]) for c in columns] for _, row in self.table.iterrows()]
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
        lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
        lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
        return "\n".join(([self.title] if self.title else []) + lines)


def _format(column: str, value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "-"
    return _COLUMNS[column].format(value)


def compare(
    model: Callable,
    data: Mapping[str, Any] | None = None,
    *,
    methods: Sequence[str | Method] | Mapping[str, str | Method],
    reference: Mapping[str, Tensor] | Posterior | None = None,
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    num_samples: int = 1000,
    seed: int | None = 0,
    progress: bool = True,
    title: str = "",
) -> Report:
    r"""Conditions one model with several methods and measures each against a reference.

    Arguments:
        model: A Pyro model.
        data: Observations by site name.
        methods: Method names or method objects, or a dict from row label to either (to
            compare one method with several option sets).
        reference: Reference posterior draws by site (``[N, *site.shape]``), or a
            :class:`~condgen.Posterior` (resampled if weighted); None to report cost only.
        args: Positional arguments of the model.
        kwargs: Keyword arguments of the model.
        num_samples: Draws per method.
        seed: Seed of every run (each method gets the same seed).
        progress: Whether to show progress bars.
        title: A title printed above the table.

    Returns:
        A :class:`Report`.

    Example:
        >>> task = condgen.evaluate.BayesianLinearRegression()
        >>> report = condgen.compare(task.model, task.data, methods=["nuts", "svi"],
        ...                          reference=task.reference_samples(10_000))
        >>> print(report.table)
    """
    if isinstance(reference, Posterior):
        reference = reference.resample().flatten()
    problem = Problem(model, data, args, kwargs)
    if not isinstance(methods, Mapping):
        methods = {str(getattr(m, "name", m)): m for m in methods}
    rows, posteriors = [], {}
    for label, method in methods.items():
        method = get_method(method)
        posterior = condition(
            problem, method=method, num_samples=num_samples, seed=seed, progress=progress
        )
        row = {
            "method": label,
            "family": method.family,
            "time_s": posterior.stats["time_s"],
            "nfe": float(posterior.stats.get("nfe", np.nan)),
        }
        if reference is not None:
            row.update(posterior_metrics(posterior, reference))
        rows.append(row)
        posteriors[label] = posterior
    return Report(pd.DataFrame(rows), posteriors, title=title)
