r"""The ``condgen`` command line.

* ``condgen demo``: the embedded default comparison, against exact posteriors.
* ``condgen compare --task NAME``: one task, chosen methods and seeds; writes the table
  (Markdown and CSV), a plot of the draws and one ArviZ netCDF file per method.
* ``condgen tasks`` and ``condgen methods``: what exists.
* ``condgen prepare digits``: trains and caches the prior of the digits tasks.

Every command has ``--help``.
"""

from __future__ import annotations

__all__ = ["demo", "main", "parse_spec"]

import argparse
import ast
import contextlib
import multiprocessing
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from . import methods as _methods
from ._checks import as_count
from .evaluate import tasks as _tasks
from .evaluate.compare import DEFAULT_METRICS, METRICS, Report, compare
from .evaluate.plots import plot_draws
from .evaluate.tasks import BayesianLinearRegression, BetaBinomial, GaussianMixtureInverseProblem
from .methods import DPS, NUTS, SMC, SVI, TDS, Importance, PiGDM


def _quiet_worker() -> None:
    r"""Sets up a demo worker process: one torch thread, and no warnings (the table shows
    what they would say, e.g. a low ESS for a Pareto k-hat warning)."""
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")


def _demo_report(
    index: int, num_samples: int, seed: int, progress: bool, executor: Executor | None
) -> Report:
    r"""The demo's ``index``-th comparison (0: the mixture, 1: the regression, 2: the
    Beta-Binomial), against the task's exact posterior."""
    if index == 0:
        task = GaussianMixtureInverseProblem.circle(seed=seed)
        methods: dict[str, Any] = {
            "nuts": NUTS(num_chains=4, warmup_steps=150, jit_compile=True),
            "smc": SMC(steps=100),
            "tds": TDS(steps=100),
            "dps": DPS(steps=100),
            "pigdm": PiGDM(steps=100),
        }
        reference = task.reference_samples(num_samples, seed=seed + 1)
        title = f"task: {task.name} (2-D mixture prior, y = x[0] + noise: bimodal posterior)"
    else:
        task = (BayesianLinearRegression(), BetaBinomial())[index - 1]
        methods = {
            "nuts": NUTS(num_chains=4, warmup_steps=150, jit_compile=True),
            "svi (mvn)": SVI(guide="mvn", num_steps=1000),
            "svi (normal)": SVI(guide="normal", num_steps=1000),
            "importance (guide)": Importance(proposal="guide", num_steps=1000),
            "importance (prior)": Importance(proposal="prior"),
        }
        reference = task.reference_samples(20_000, seed=seed)
        title = f"task: {task.name}"
    with warnings.catch_warnings():  # e.g. Pareto k-hat: the table shows ess instead
        warnings.simplefilter("ignore")
        return compare(
            task.model,
            task.data,
            methods=methods,
            reference=reference,
            reference_label="exact draws",
            num_samples=num_samples,
            seed=seed,
            progress=progress,
            title=title,
            executor=executor,
        )


def demo(
    num_samples: int = 1000,
    seed: int = 0,
    progress: bool = False,
    plot: str | None = None,
    workers: int = 1,
) -> list[Report]:
    r"""The embedded default comparison, against exact posteriors.

    1. A 2-D Gaussian-mixture prior (a stand-in for a learned prior, with its exact denoiser)
       observed through one noisy linear projection, so the posterior is bimodal: NUTS on its
       exact density, SMC, TDS, DPS and PiGDM.
    2. The Bayesian methods on a Bayesian linear regression and a constrained Beta-Binomial.

    Every run (a method on a task) is an independent job with its own seed: with
    ``workers > 1`` the runs of each comparison fan out over that many processes (one torch
    thread each) and give the table of the local run.

    Arguments:
        num_samples: Draws per method.
        seed: Seed of every run.
        progress: Whether to show progress bars.
        plot: A PNG path for the draws of the mixture task beside the exact posterior.
        workers: Processes to run the comparisons in.

    Returns:
        One :class:`~condgen.evaluate.Report` per task.
    """
    workers = as_count("workers", workers)
    with contextlib.ExitStack() as stack:
        executor = None
        if workers > 1:  # forked where that is safe (Linux): no second import of condgen
            method = "fork" if sys.platform == "linux" else "spawn"
            context = multiprocessing.get_context(method)
            executor = stack.enter_context(ProcessPoolExecutor(workers, context, _quiet_worker))
        reports = [_demo_report(i, num_samples, seed, progress, executor) for i in range(3)]
    if plot:
        mixture = reports[0]
        figure = plot_draws(mixture.posteriors, mixture.reference["x"], "x", title=mixture.title)
        figure.savefig(plot, dpi=120)
    return reports


def _value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    r"""Parses ``"name"`` or ``"name:key=value,key=value"`` into a name and its options
    (values read as Python literals, else strings).

    Example:
        >>> from condgen.cli import parse_spec
        >>> parse_spec("tds:steps=200,twist='constant'")
        ('tds', {'steps': 200, 'twist': 'constant'})
    """
    name, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"option {item!r} of {spec!r} is not KEY=VALUE")
        options[key.strip()] = _value(value.strip())
    return name.strip(), options


@contextlib.contextmanager
def _executor(address: str | None, workers: int) -> Iterator[Any]:
    if address is None:
        yield None
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError as error:  # pragma: no cover - depends on the installed extras
        raise SystemExit(
            "--dask needs Dask's distributed scheduler: pip install 'condgen[dask]'"
        ) from error
    if address == "local":
        with (
            LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None) as c,
            Client(c) as client,
        ):
            yield client
    else:
        with Client(address) as client:
            yield client


def _compare_command(args: argparse.Namespace) -> int:
    options = dict(parse_spec(f"task:{','.join(args.option)}")[1]) if args.option else {}
    task = _tasks.get_task(args.task, **options)
    specs = args.methods or list(task.default_methods)
    methods: dict[str, Any] = {}
    for spec in specs:
        name, method_options = parse_spec(spec)
        try:
            methods[spec] = _methods.get(name, **method_options)
        except ValueError:  # reported as the method's row, with its message
            methods[spec] = spec
    say = _printer(args.quiet)
    say(f"task {task.name}: {task.description}")
    say(f"reference: {args.reference_samples} draws ({'exact' if task.exact else 'approximate'})")
    reference = task.reference_samples(args.reference_samples, seed=args.seed + 10_000)
    label = "exact draws" if task.exact else f"{type(task).__name__} long run (approximate)"
    with _executor(args.dask, args.workers) as executor, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = compare(
            task.model,
            task.data,
            methods=methods,
            reference=reference,
            reference_label=label,
            num_samples=args.num_samples,
            seeds=args.seeds,
            seed=args.seed,
            metrics=args.metrics,
            executor=executor,
            progress=not args.quiet,
            title=f"task: {task.name} ({args.seeds} seed{'s' * (args.seeds > 1)})",
        )
    say(str(report))
    if args.out:
        written = report.save(args.out)
        if callable(getattr(task, "plot", None)):  # a task's own pictures, e.g. the digits
            import matplotlib.pyplot as plt

            figure = task.plot(report.posteriors)
            written.append(Path(args.out) / "images.png")
            figure.savefig(written[-1], dpi=120)
            plt.close(figure)
        say(f"\nwrote {len(written)} files to {args.out}/: " + ", ".join(p.name for p in written))
    return 0


def _printer(quiet: bool):
    def say(text: str) -> None:
        if not quiet:
            print(text, flush=True)

    return say


def _demo_command(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    say = _printer(args.quiet)
    say(
        "condgen demo: each method against the exact posterior "
        "(mean_err: worst |mean error| / posterior sd; sd_ratio: 1 is right; "
        "sw: sliced Wasserstein)\n"
    )
    progress = (args.progress or _interactive()) and not args.quiet
    plot = str(Path(args.plot).resolve()) if args.plot else None
    reports = demo(args.num_samples, args.seed, progress, plot=plot, workers=args.workers)
    for report in reports:
        say(f"{report}\n")
    say(f"total time: {time.perf_counter() - start:.1f} s ({args.workers} processes)")
    if plot:
        say(f"the mixture task's draws beside the exact posterior: {plot}")
    return 0


def _tasks_command(args: argparse.Namespace) -> int:
    listed = _tasks.available_tasks()
    width = max(map(len, listed))
    for name, description in listed.items():
        print(f"{name.ljust(width)}  {description}")
    return 0


def _methods_command(args: argparse.Namespace) -> int:
    listed, summaries = _methods.available(), _methods.describe()
    width = max(map(len, listed))
    for name, family in listed.items():
        print(f"{name.ljust(width)}  {family.ljust(9)}  {summaries[name]}")
    return 0


def _prepare_command(args: argparse.Namespace) -> int:
    from .evaluate.digits import prepare_digits

    steps = {} if args.steps is None else {"steps": args.steps}
    path = prepare_digits(
        cache_dir=args.cache_dir, progress=not args.quiet, seed=args.seed, **steps
    )
    _printer(args.quiet)(f"digits prior cached at {path}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="condgen",
        description="Condition deep generative priors on data: compare Bayesian and "
        "guidance-based methods against ground truth.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "demo", help="the embedded default comparison (under a minute)", description=demo.__doc__
    )
    run.add_argument("--num-samples", type=int, default=1000, help="draws per method")
    run.add_argument("--seed", type=int, default=0, help="seed of every run")
    run.add_argument("--progress", action="store_true", help="show progress bars")
    run.add_argument("--quiet", action="store_true", help="print nothing")
    run.add_argument(
        "--plot", default="condgen-demo.png", help="PNG of the mixture task's draws ('' for none)"
    )
    run.add_argument(
        "--workers", type=int, default=2, help="processes for the three comparisons (default 2)"
    )
    run.set_defaults(handler=_demo_command)

    run = commands.add_parser(
        "compare",
        help="compare methods on one task; write tables, plots and ArviZ files",
        description="Runs the chosen methods on a task for several seeds and measures each "
        "against the task's reference posterior (exact where the task has one).",
        epilog="example: condgen compare --task gmm --option dim=8 --methods nuts dps "
        "'tds:steps=200' --seeds 3 --out results",
    )
    run.add_argument("--task", required=True, help="a task name (see `condgen tasks`)")
    run.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the task, e.g. dim=8 (repeatable)",
    )
    run.add_argument(
        "--methods",
        nargs="+",
        metavar="SPEC",
        help="methods as NAME or NAME:KEY=VALUE,... (default: the task's applicable methods)",
    )
    run.add_argument("--seeds", type=int, default=1, help="number of seeds per method")
    run.add_argument("--seed", type=int, default=0, help="the first seed")
    run.add_argument("--num-samples", type=int, default=1000, help="draws per method and seed")
    run.add_argument(
        "--metrics",
        nargs="+",
        choices=METRICS,
        default=[*DEFAULT_METRICS[:3], "c2st", *DEFAULT_METRICS[3:]],
        help="the table's metrics",
    )
    run.add_argument(
        "--reference-samples", type=int, default=10_000, help="draws of the reference"
    )
    run.add_argument("--out", help="folder for table.md, table.csv, draws.png and <method>.nc")
    run.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="fan the runs out over a Dask scheduler at ADDRESS, or 'local' for a local cluster",
    )
    run.add_argument("--workers", type=int, default=2, help="workers of a --dask local cluster")
    run.add_argument("--quiet", action="store_true", help="no progress bars and no printing")
    run.set_defaults(handler=_compare_command)

    run = commands.add_parser("tasks", help="list the tasks", description="Lists the tasks.")
    run.set_defaults(handler=_tasks_command)
    run = commands.add_parser(
        "methods",
        help="list the methods and their family",
        description="Lists the methods and their family.",
    )
    run.set_defaults(handler=_methods_command)

    run = commands.add_parser(
        "prepare",
        help="train and cache what a task needs (the digits prior)",
        description="Trains the diffusion prior of the digits tasks on scikit-learn's 8x8 "
        "digits and caches it on disk.",
    )
    run.add_argument("what", choices=["digits"], help="what to prepare")
    run.add_argument("--steps", type=int, default=None, help="training steps")
    run.add_argument("--cache-dir", help="cache folder (default $CONDGEN_CACHE or ~/.cache)")
    run.add_argument("--seed", type=int, default=0, help="training seed")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(handler=_prepare_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    r"""Runs the ``condgen`` command line with ``argv`` (default ``sys.argv[1:]``)."""
    args = _parser().parse_args(argv)
    # the tasks' models are small: intra-op threads only contend (several-fold slower SVI)
    torch.set_num_threads(1)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"condgen {args.command}: error: {error}", file=sys.stderr)
        return 2


def _interactive() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
