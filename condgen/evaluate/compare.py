r"""Side-by-side comparison of conditioning methods against a reference posterior."""

from __future__ import annotations

__all__ = ["METRICS", "Report", "compare", "posterior_metrics"]

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pandas as pd
from torch import Tensor

from .._random import check_seed
from ..conditioning import condition, seeded
from ..methods import get as get_method
from ..methods.base import Method
from ..posterior import Posterior
from ..problem import Problem
from .parallel import map_jobs
from .report import Report, summarise_runs
from .runs import Run, compare_run
from .scoring import DEFAULT_METRICS, METRICS, check_metrics, posterior_metrics


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
    seed = check_seed(seed)
    if seeds is None:
        return [seed]
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"seeds must be a positive count or a list of seeds, got {seeds}")
        return [check_seed(seed + i, "seed + seeds") for i in range(seeds)]
    seeds = [check_seed(s, f"seeds[{i}]") for i, s in enumerate(seeds)]
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
    metrics = check_metrics(metrics)
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
        compare_run,
        [
            (Run(model, data, args, kwargs, m, num_samples, s), reference, metrics)
            for _, s, m in jobs
        ],
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
                    chain_log_weights=result["chain_log_weights"],
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
    table = summarise_runs(runs, list(methods))
    return Report(table, runs, posteriors, reference, reference_label, title)
