r"""Side-by-side comparison of conditioning methods against a reference posterior."""

from __future__ import annotations

__all__ = ["METRICS", "Report", "compare", "posterior_metrics"]

import math
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import arviz as az
import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..conditioning import condition, seeded
from ..methods import get as get_method
from ..methods.base import Method
from ..posterior import Posterior
from ..problem import Problem
from .metrics import c2st, energy_distance, mmd, moment_errors, sliced_wasserstein
from .parallel import map_jobs

METRICS = ("mean_err", "sd_ratio", "sw", "energy", "mmd", "c2st", "ess", "rhat")
r"""The metrics :func:`posterior_metrics` can compute (see there)."""

DEFAULT_METRICS = ("mean_err", "sd_ratio", "sw", "ess", "rhat")

_FORMATS = {
    "time_s": "{:.2f}",
    "nfe": "{:.0f}",
    "mean_err": "{:.3f}",
    "sd_ratio": "{:.3f}",
    "sw": "{:.4f}",
    "energy": "{:.4f}",
    "mmd": "{:.4f}",
    "c2st": "{:.3f}",
    "ess": "{:.0f}",
    "rhat": "{:.3f}",
}


def _stack(values: Mapping[str, Tensor], names: Sequence[str]) -> Tensor:
    return torch.cat([values[k].reshape(len(values[k]), -1).double() for k in names], dim=-1)


def _weights(posterior: Posterior) -> Tensor | None:
    if posterior.log_weights is None:
        return None
    return (posterior.log_weights.exp() / posterior.num_chains).flatten()


def posterior_metrics(
    posterior: Posterior,
    reference: Mapping[str, Tensor],
    metrics: Iterable[str] = DEFAULT_METRICS,
) -> dict[str, float]:
    r"""Measures posterior draws against reference draws of the same sites.

    Metrics, over all latent coordinates :math:`j` with reference mean :math:`m_j` and
    standard deviation :math:`s_j` (see :func:`~condgen.evaluate.moment_errors`):

    * ``mean_err``: :math:`\max_j |\hat m_j - m_j| / s_j`, the worst standardised mean error;
    * ``sd_ratio``: the mean over :math:`j` of :math:`\hat s_j / s_j` (1 is right, below 1
      under-dispersed);
    * ``sw``: the sliced 2-Wasserstein distance (:func:`~condgen.evaluate.sliced_wasserstein`);
    * ``energy``: the energy distance (:func:`~condgen.evaluate.energy_distance`);
    * ``mmd``: the squared MMD, Gaussian kernel with the median-heuristic bandwidth
      (:func:`~condgen.evaluate.mmd`);
    * ``c2st``: the classifier two-sample accuracy (:func:`~condgen.evaluate.c2st`), 0.5 is
      indistinguishable, on equally many draws of each;
    * ``ess``: the bulk effective sample size from ArviZ (minimum over coordinates), or the
      importance ESS of the weights for weighted posteriors;
    * ``rhat``: the largest rank-normalised R-hat (NaN with a single chain).

    Weighted posteriors are measured through their weighted moments and resampled draws.
    Sample distances use at most 4000 draws of each side.

    Arguments:
        posterior: The draws to measure.
        reference: Reference draws by site, ``[M, *site.shape]``.
        metrics: The metrics to compute, from :data:`METRICS`.

    Returns:
        The metrics by name.
    """
    metrics = list(metrics)
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; available: {list(METRICS)}")
    names = list(posterior.problem.latent_sites)
    missing = sorted(set(names) - set(reference))
    if missing:
        raise ValueError(f"the reference has no draws for the sites {missing}")
    flat = posterior.flatten()
    ref = _stack(reference, names).cpu()
    mean_err, sd_ratio = moment_errors(_stack(flat, names).cpu(), ref, _weights(posterior))
    draws = _stack(posterior.resample().flatten(), names).cpu()
    n = min(len(draws), len(ref), 4000)
    draws_n, ref_n = draws[:n], ref[torch.randperm(len(ref), generator=_generator())[:n]]
    values = {
        "mean_err": lambda: float(mean_err.abs().max()),
        "sd_ratio": lambda: float(sd_ratio.mean()),
        "sw": lambda: float(sliced_wasserstein(draws, ref)),
        "energy": lambda: float(energy_distance(draws_n, ref_n)),
        "mmd": lambda: float(mmd(draws_n, ref_n)),
        "c2st": lambda: float(c2st(ref_n, draws_n)),
        "ess": lambda: _ess(posterior),
        "rhat": lambda: _rhat(posterior),
    }
    return {name: values[name]() for name in metrics}


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _ess(posterior: Posterior) -> float:
    if posterior.log_weights is not None:
        return float(posterior.stats.get("ess", math.nan))
    return _extreme(az.ess(_posterior_group(posterior), method="bulk"), min)


def _rhat(posterior: Posterior) -> float:
    if posterior.log_weights is not None or posterior.num_chains < 2:
        return math.nan
    return _extreme(az.rhat(_posterior_group(posterior)), max)


def _posterior_group(posterior: Posterior):
    return az.from_dict(posterior={k: v.cpu().numpy() for k, v in posterior.samples.items()})


def _extreme(dataset, reduce: Callable) -> float:
    return float(reduce(reduce(v.values.ravel()) for v in dataset.data_vars.values()))


def _run(
    model: Callable,
    data: Mapping[str, Any] | None,
    args: tuple,
    kwargs: Mapping[str, Any] | None,
    method: Method,
    num_samples: int,
    seed: int,
    reference: Mapping[str, Tensor] | None,
    metrics: Sequence[str],
) -> dict[str, Any]:
    r"""One run of one method (a picklable job): its statistics, metrics and draws, or the
    error it raised."""
    try:
        posterior = condition(
            model,
            data,
            args=args,
            kwargs=kwargs,
            method=method,
            num_samples=num_samples,
            seed=seed,
            progress=False,
        )
        row = {
            "time_s": float(posterior.stats["time_s"]),
            "nfe": float(posterior.stats.get("nfe", np.nan)),
        }
        if reference is not None:
            with seeded(seed):  # resampling weighted draws is random too
                row.update(posterior_metrics(posterior, reference, metrics))
    except Exception as error:  # a failing method is a row, not a crash
        return {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    return {
        "row": row,
        "samples": posterior.samples,
        "log_weights": posterior.log_weights,
        "stats": posterior.stats,
        "sample_stats": posterior.sample_stats,
        "method": posterior.method,
    }


class Report:
    r"""The result of :func:`compare`: one row per method, with the spread over seeds.

    Attributes:
        table: A :class:`pandas.DataFrame`, one row per method: ``method``, ``family``,
            ``seeds`` (runs that succeeded), ``time_s``, ``nfe``, the metrics (means over
            seeds) and, with several seeds, their standard deviations as ``<metric>_sd``;
            ``error`` holds the error of a method that failed (NaN metrics), or is empty.
        runs: A :class:`pandas.DataFrame`, one row per method and seed.
        posteriors: The posterior of each method's first successful seed, by label.
        reference: The reference draws by site (None without a reference).
        reference_label: What the reference is, e.g. ``"exact draws"`` or ``"nuts, run long
            (approximate)"``.
        title: A title printed above the table.
    """

    def __init__(
        self,
        table: pd.DataFrame,
        runs: pd.DataFrame,
        posteriors: dict[str, Posterior],
        reference: Mapping[str, Tensor] | None = None,
        reference_label: str = "",
        title: str = "",
    ):
        self.table, self.runs, self.posteriors = table, runs, posteriors
        self.reference, self.reference_label, self.title = reference, reference_label, title

    def _cells(self) -> tuple[list[str], list[list[str]]]:
        columns = ["method", "family"] + [c for c in _FORMATS if c in self.table.columns]
        several = self.table["seeds"].max() > 1 if len(self.table) else False
        if several:
            columns.insert(2, "seeds")
        errors = self.table["error"].fillna("").astype(str) if "error" in self.table else None
        if errors is not None and errors.str.len().any():
            columns.append("error")
        rows = []
        for _, row in self.table.iterrows():
            cells = []
            for c in columns:
                if c in _FORMATS:
                    cell = _format(c, row[c])
                    spread = row.get(f"{c}_sd", math.nan)
                    if several and isinstance(spread, float) and math.isfinite(spread):
                        cell += " ± " + _format(c, spread)
                    cells.append(cell)
                else:
                    cells.append(_shorten(str(row[c]) if row[c] == row[c] else ""))
            rows.append(cells)
        return columns, rows

    def _header(self) -> list[str]:
        lines = [self.title] if self.title else []
        if self.reference_label:
            lines.append(f"reference: {self.reference_label}")
        return lines

    def to_markdown(self) -> str:
        r"""The table as a Markdown (GitHub) table, with ``mean ± sd`` over seeds."""
        columns, rows = self._cells()
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |" for r in rows]
        return "\n".join(lines)

    def to_csv(self, path: str | Path | None = None) -> str | None:
        r"""The table as CSV (full precision, spreads in ``<metric>_sd`` columns): written to
        ``path`` if given, else returned."""
        return self.table.to_csv(path, index=False)

    def moment_errors(self) -> pd.DataFrame:
        r"""Per-coordinate moment errors of each method's posterior against the reference:
        one row per method and coordinate, with the standardised mean error ``mean_err`` and
        the standard deviation ratio ``sd_ratio`` (see
        :func:`~condgen.evaluate.moment_errors`)."""
        if self.reference is None:
            raise ValueError("the report has no reference")
        rows = []
        for label, posterior in self.posteriors.items():
            names = list(posterior.problem.latent_sites)
            flat, ref = _stack(posterior.flatten(), names), _stack(self.reference, names)
            errors, ratios = moment_errors(flat.cpu(), ref.cpu(), _weights(posterior))
            coordinates = [
                f"{name}[{i}]" if value[0].numel() > 1 else name
                for name in names
                for value in [self.reference[name]]
                for i in range(value[0].numel())
            ]
            rows += [
                {"method": label, "coordinate": c, "mean_err": float(e), "sd_ratio": float(r)}
                for c, e, r in zip(coordinates, errors, ratios, strict=True)
            ]
        return pd.DataFrame(rows)

    def plot(self, site: str | None = None, dims: tuple[int, int] = (0, 1), **options: Any):
        r"""Draws of each method beside the reference (see
        :func:`~condgen.evaluate.plots.plot_draws`); ``site`` defaults to the first latent
        site. Returns a matplotlib figure."""
        from .plots import plot_draws

        if self.reference is None:
            raise ValueError("the report has no reference to plot the draws against")
        site = site or next(iter(self.reference))
        return plot_draws(
            self.posteriors, self.reference[site], site, dims=dims, title=self.title, **options
        )

    def save(self, directory: str | Path, plot: bool = True) -> list[Path]:
        r"""Writes ``table.md``, ``table.csv``, ``runs.csv``, ``draws.png`` (with a reference
        and ``plot``) and one ArviZ netCDF file per method (``<label>.nc``) to ``directory``.

        Returns:
            The paths written.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = [directory / "table.md", directory / "table.csv", directory / "runs.csv"]
        written[0].write_text("\n\n".join([*self._header(), self.to_markdown()]) + "\n")
        self.to_csv(written[1])
        self.runs.drop(columns=["traceback"], errors="ignore").to_csv(written[2], index=False)
        if plot and self.reference is not None and self.posteriors:
            import matplotlib.pyplot as plt

            figure = self.plot()
            figure.savefig(directory / "draws.png", dpi=120)
            plt.close(figure)
            written.append(directory / "draws.png")
        for label, posterior in self.posteriors.items():
            path = directory / f"{_file_name(label)}.nc"
            posterior.to_arviz().to_netcdf(str(path))
            written.append(path)
        return written

    def __str__(self) -> str:
        columns, rows = self._cells()
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
        lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
        lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
        return "\n".join(self._header() + lines)

    def __repr__(self) -> str:
        return f"Report({list(self.table['method'])})"


def _format(column: str, value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "-"
    return _FORMATS[column].format(value)


def _shorten(text: str, width: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _file_name(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label).strip("_")


def _reference_draws(
    reference: Any,
    problem: Problem,
    num_samples: int,
    seed: int,
    progress: bool,
) -> tuple[dict[str, Tensor] | None, str]:
    if reference is None:
        return None, ""
    if isinstance(reference, Posterior):
        return reference.resample().flatten(), f"a given posterior ({reference.method})"
    if isinstance(reference, str | Method):
        method = get_method(reference)
        posterior = condition(
            problem, method=method, num_samples=num_samples, seed=seed, progress=progress
        )
        draws = posterior.resample().flatten()
        return draws, f"{method.name}, {num_samples} draws (approximate, not exact)"
    if isinstance(reference, Mapping):
        return dict(reference), "given draws"
    raise TypeError(
        "reference must be draws by site, a Posterior, a method name or None, "
        f"got {type(reference).__name__}"
    )


def _seeds(seeds: int | Iterable[int] | None, seed: int) -> list[int]:
    if seeds is None:
        return [seed]
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"seeds must be a positive count or a list of seeds, got {seeds}")
        return [seed + i for i in range(seeds)]
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds is empty")
    return seeds


def compare(
    model: Callable,
    data: Mapping[str, Any] | None = None,
    *,
    methods: Sequence[str | Method] | Mapping[str, str | Method],
    reference: Mapping[str, Tensor] | Posterior | str | Method | None = None,
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    num_samples: int = 1000,
    seeds: int | Iterable[int] | None = None,
    seed: int = 0,
    metrics: Iterable[str] = DEFAULT_METRICS,
    reference_samples: int = 10_000,
    reference_label: str | None = None,
    executor: Any = None,
    progress: bool = True,
    title: str = "",
) -> Report:
    r"""Conditions one model with several methods and measures each against a reference.

    Every method runs once per seed; each run is an independent job with its own seed, so
    the runs can fan out over an ``executor`` (a :class:`concurrent.futures.Executor` or a
    Dask ``distributed.Client``) and give the same table as the local run. A method that
    fails (bad options, a model it cannot handle, NaN draws) becomes a row with its error.

    Arguments:
        model: A Pyro model.
        data: Observations by site name.
        methods: Method names or method objects, or a dict from row label to either (to
            compare one method with several option sets).
        reference: Reference posterior draws by site (``[N, *site.shape]``), a
            :class:`~condgen.Posterior` (resampled if weighted), a method name or object to
            run long for models without an exact posterior (``"nuts"``; the report flags it
            as approximate), or None to report cost only.
        args: Positional arguments of the model.
        kwargs: Keyword arguments of the model.
        num_samples: Draws per method and seed.
        seeds: The seeds of the runs: a count (``seed, seed + 1, ...``) or a list; by default
            ``seed`` alone.
        seed: The first seed (and the seed of a reference run).
        metrics: The metrics of the table, from :data:`METRICS`.
        reference_samples: Draws of a reference that is a method run.
        reference_label: What the reference is, for the report, e.g. ``"exact draws"`` (by
            default ``"given draws"`` for draws, or the method run).
        executor: None to run locally, or an executor or Dask client to fan the runs out.
        progress: Whether to show progress bars.
        title: A title printed above the table.

    Returns:
        A :class:`Report`.

    Example:
        A comparison of two quick methods on a model with an exact posterior,
        :math:`\mathcal{N}(0.8, 0.2)` (a fuller one: ``methods=["nuts", "svi"]``, the
        default 1000 draws, ``seeds=3`` and 10000 reference draws):

        >>> import condgen, pyro, torch
        >>> import pyro.distributions as dist
        >>> from condgen.methods import SVI, Importance
        >>> def model():
        ...     x = pyro.sample("x", dist.Normal(0.0, 1.0))
        ...     pyro.sample("y", dist.Normal(x, 0.5))
        >>> reference = {"x": dist.Normal(0.8, 0.2**0.5).sample((2000,))}
        >>> report = condgen.compare(
        ...     model, {"y": torch.tensor(1.0)}, reference=reference, seeds=2, progress=False,
        ...     methods={"importance": Importance(proposal="prior"), "svi": SVI(num_steps=50)},
        ... )
        >>> list(report.table["method"]), list(report.table["seeds"])
        (['importance', 'svi'], [2, 2])
        >>> errors = report.table.set_index("method")["mean_err"]  # in posterior sds
        >>> bool(errors["importance"] < 0.1)
        True
        >>> sorted(path.name for path in report.save("results"))  # the files written
        ['draws.png', 'importance.nc', 'runs.csv', 'svi.nc', 'table.csv', 'table.md']

        ``print(report)`` shows the whole table, times included.
    """
    seeds = _seeds(seeds, seed)
    metrics = list(metrics)
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; available: {list(METRICS)}")
    with seeded(seed):  # tracing draws from the prior: keep the caller's random state
        problem = Problem(model, data, args, kwargs)
    reference, label = _reference_draws(reference, problem, reference_samples, seed, progress)
    reference_label = label if reference_label is None else reference_label
    if not isinstance(methods, Mapping):
        methods = {str(getattr(m, "name", m)): m for m in methods}
    resolved: dict[str, Method | Exception] = {}
    for label, method in methods.items():
        try:
            resolved[label] = get_method(method)
        except (ValueError, TypeError) as error:  # an unknown name or option: a row
            resolved[label] = error
    jobs = [
        (label, s, method)
        for label, method in resolved.items()
        if isinstance(method, Method)
        for s in seeds
    ]
    results = map_jobs(
        _run,
        [(model, data, args, kwargs, m, num_samples, s, reference, metrics) for _, s, m in jobs],
        executor=executor,
        progress=progress,
        desc="compare",
    )
    runs, posteriors = [], {}
    for (label, s, method), result in zip(jobs, results, strict=True):
        run = {"method": label, "family": method.family, "seed": s}
        if "error" in result:
            run.update(error=result["error"], traceback=result["traceback"])
        else:
            run.update(result["row"])
            if label not in posteriors:
                posteriors[label] = Posterior(
                    problem,
                    result["samples"],
                    log_weights=result["log_weights"],
                    stats=result["stats"],
                    sample_stats=result["sample_stats"],
                    method=result["method"],
                )
        runs.append(run)
    for label, method in resolved.items():
        if isinstance(method, Exception):
            error = f"{type(method).__name__}: {method}"
            runs.append({"method": label, "family": "-", "seed": seed, "error": error})
    runs = pd.DataFrame(runs)
    table = _summarise(runs, list(methods))
    return Report(table, runs, posteriors, reference, reference_label, title)


def _summarise(runs: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    numeric = [c for c in _FORMATS if c in runs.columns]
    rows = []
    for label in labels:
        group = runs[runs["method"] == label]
        failed = group["error"].notna() if "error" in group else pd.Series(False, group.index)
        ok = group[~failed]
        row: dict[str, Any] = {
            "method": label,
            "family": group["family"].iloc[0],
            "seeds": len(ok),
        }
        for c in numeric:
            row[c] = float(ok[c].mean()) if len(ok) else math.nan
            row[f"{c}_sd"] = float(ok[c].std()) if len(ok) > 1 else math.nan
        errors = group.loc[failed, "error"] if failed.any() else []
        row["error"] = (
            ""
            if not len(errors)
            else errors.iloc[0]
            if len(errors) == len(group)
            else f"{len(errors)}/{len(group)} seeds failed: {errors.iloc[0]}"
        )
        rows.append(row)
    return pd.DataFrame(rows)
