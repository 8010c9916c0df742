r"""The ``condgen`` command line.

* ``condgen demo``: the embedded default comparison, against exact posteriors.
* ``condgen compare --task NAME``: one task, chosen methods and seeds; writes the table
  (Markdown and CSV), a plot of the draws and one ArviZ netCDF file per method.
* ``condgen tasks`` and ``condgen methods``: what exists.
* ``condgen prepare digits``: trains and caches the prior of the digits tasks.
* ``condgen train DATA --out PRIOR``: fits a prior to the samples of a tensor file and saves
  it; ``torchrun --nproc_per_node=K -m condgen train ...`` fits it data-parallel.

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
from .priors.flow import FLOW_CLASSES


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


PRIORS = ("diffusion", "flow-matching", "flow")
r"""The priors of ``condgen train``."""


def _load_samples(path: str) -> torch.Tensor:
    r"""The samples in ``path``: a ``.pt`` file holding one tensor (read with
    ``torch.load(weights_only=True)``) or a NumPy ``.npy`` file, as a floating-point tensor
    shaped ``[N, *event]`` with finite values (integers become floats)."""
    import numpy as np

    file = Path(path)
    works = "a .pt file holding one tensor (torch.save(samples, path)) or a NumPy .npy file"
    if not file.exists():
        raise FileNotFoundError(f"data file {path!r} does not exist")
    if not file.is_file():
        raise ValueError(f"data file {path!r} is not a file: give {works}")
    suffix = file.suffix.lower()
    if suffix == ".pt":
        try:
            samples = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several kinds for a file it cannot read
            raise ValueError(f"data file {path!r} cannot be read as {works}: {error}") from None
        if not isinstance(samples, torch.Tensor):
            raise ValueError(
                f"data file {path!r} holds a {type(samples).__name__}, not a tensor: give {works}"
            )
    elif suffix == ".npy":
        try:
            array = np.load(file, allow_pickle=False)
        except (ValueError, OSError) as error:
            raise ValueError(f"data file {path!r} cannot be read as {works}: {error}") from None
        if array.dtype.kind not in "biuf":
            raise ValueError(f"data file {path!r} holds {array.dtype} values, not numbers")
        samples = torch.from_numpy(np.ascontiguousarray(array))
    else:
        raise ValueError(
            f"data file {path!r} has an unknown type ({suffix or 'no suffix'}): give {works}"
        )
    if samples.is_complex() or samples.dtype == torch.bool:
        raise ValueError(f"data file {path!r} holds {samples.dtype} values, not real numbers")
    if samples.dim() < 2 or len(samples) == 0:
        hint = ": one value per sample? save it shaped [N, 1]" if samples.dim() == 1 else ""
        raise ValueError(
            f"data file {path!r} holds a tensor of shape {tuple(samples.shape)}, but the "
            f"samples must be shaped [N, *event] with N >= 1{hint}"
        )
    samples = samples if samples.is_floating_point() else samples.double()
    bad = ~torch.isfinite(samples)
    if bad.any():
        rows = bad.flatten(1).any(1).nonzero().flatten().tolist()
        raise ValueError(
            f"data file {path!r} has {int(bad.sum())} NaN or infinite entries, in {len(rows)} "
            f"of its {len(samples)} samples (the first at index {rows[0]}): remove or impute "
            f"them"
        )
    return samples


def _unused(args: argparse.Namespace, names: Sequence[str], why: str) -> None:
    r"""Refuses the options ``names`` (attributes of ``args``) that were given but do not
    apply, saying ``why``."""
    given = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) is not None]
    if given:
        raise ValueError(
            f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply: {why}"
        )


def _build_prior(args: argparse.Namespace, event_shape: tuple[int, ...]) -> Any:
    r"""The untrained prior that ``condgen train`` fits to samples of ``event_shape``: a
    flow for vectors, or a path prior with an MLP (vectors) or a UNet (images ``[C, H,
    W]``)."""
    from .priors import MLP, DiffusionPrior, FlowMatchingPrior, FlowPrior, UNet

    if args.prior == "flow":
        _unused(args, ["ema", "schedule", "prediction", "base", "levels"], "the prior is a flow")
        if len(event_shape) != 1:
            raise ValueError(
                f"data file {args.data!r}: each sample has shape {list(event_shape)}, but "
                f"--prior flow takes vectors [N, d]; use --prior diffusion or flow-matching "
                f"for images"
            )
        options: dict[str, Any] = {"flow": args.flow or "nsf"}
        if args.transforms is not None:
            options["transforms"] = args.transforms
        if args.hidden is not None:
            options["hidden_features"] = list(args.hidden)
        return FlowPrior.build(event_shape[0], **options)
    _unused(args, ["flow", "transforms"], f"--prior flow takes it, not --prior {args.prior}")
    if len(event_shape) == 1:
        _unused(args, ["base", "levels"], "vectors get an MLP (--hidden); images a UNet")
        hidden = (256, 256, 256) if args.hidden is None else tuple(args.hidden)
        network: torch.nn.Module = MLP(event_shape[0], hidden=hidden)
    elif len(event_shape) == 3:
        _unused(args, ["hidden"], "images get a UNet (--base, --levels); vectors an MLP")
        levels = 2 if args.levels is None else args.levels
        if event_shape[1] % 2**levels or event_shape[2] % 2**levels:
            raise ValueError(
                f"images of {event_shape[1]}x{event_shape[2]} pixels cannot be halved "
                f"--levels={levels} times: use fewer levels, or pad them to a multiple of "
                f"{2**levels}"
            )
        network = UNet(event_shape[0], base=args.base or 32, levels=levels)
    else:
        raise ValueError(
            f"data file {args.data!r}: each sample has shape {list(event_shape)}, but "
            f"condgen train takes vectors [N, d] or images [N, C, H, W]"
        )
    if args.prior == "flow-matching":
        _unused(args, ["schedule", "prediction"], "flow matching has a fixed path and target")
        return FlowMatchingPrior(network, event_shape=event_shape)
    schedule, prediction = args.schedule or "vp", args.prediction or "denoiser"
    return DiffusionPrior(network, schedule, event_shape=event_shape, prediction=prediction)


def _train_device(name: str | None) -> torch.device:
    r"""The device of ``--device`` (default: CUDA when there is one, else the CPU); under
    ``torchrun`` a CUDA device without an index is that of the process's ``LOCAL_RANK``."""
    name = name or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"--device {name!r} is not a torch device, e.g. cpu, cuda, cuda:1"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: torch sees no CUDA device")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if device.index >= torch.cuda.device_count():
            raise ValueError(
                f"--device {name}: no {device}, torch sees {torch.cuda.device_count()} CUDA "
                f"device(s)"
            )
        torch.cuda.set_device(device)
    return device


def _train_command(args: argparse.Namespace) -> int:
    from torch import distributed

    from ._training import _process_group

    as_count("--steps", args.steps)
    as_count("--batch-size", args.batch_size)
    data = _load_samples(args.data)
    out = Path(args.out)
    if not out.parent.is_dir():
        raise ValueError(f"--out {args.out!r}: the folder {str(out.parent)!r} does not exist")
    if args.checkpoint is not None and Path(args.checkpoint).resolve() == out.resolve():
        raise ValueError("--checkpoint and --out must be different files")
    if args.every is not None and args.checkpoint is None:
        raise ValueError("--every needs --checkpoint (the file the fit is resumable from)")
    device = _train_device(args.device)
    data = data.to(device, getattr(torch, args.dtype))
    torch.manual_seed(args.seed)
    prior = _build_prior(args, tuple(data.shape[1:]))
    try:
        rank, world = _process_group(device)  # under torchrun: joins the process group
        say = _printer(args.quiet or rank != 0)
        resumed = args.checkpoint is not None and Path(args.checkpoint).exists()
        if world > 1 and args.checkpoint is not None:
            _check_checkpoint_shared(resumed, world, device, args.checkpoint)
        network = prior.flow if args.prior == "flow" else prior.network
        size = sum(p.numel() for p in network.parameters())
        say(
            f"condgen train: a {type(prior).__name__} ({type(network).__name__}, "
            f"{size:,} weights) on {len(data)} samples of shape {list(data.shape[1:])}, "
            f"{device} {args.dtype}, {world} process{'es' * (world > 1)} x "
            f"{torch.get_num_threads()} thread{'s' * (torch.get_num_threads() > 1)}"
        )
        spread, centre = data.std().item(), data.mean(0).abs().max().item()
        if not 0.05 < spread < 20 or centre > 5:
            say(
                f"note: the samples are not standardised (sd {spread:.3g}, largest |mean| "
                f"{centre:.3g}); the priors assume roughly unit scale"
            )
        if resumed:
            say(f"resuming from the checkpoint {args.checkpoint}")
        options: dict[str, Any] = {"steps": args.steps, "batch_size": args.batch_size}
        options |= {"lr": args.lr, "weight_decay": args.weight_decay, "clip": args.clip}
        options |= {"progress": not args.quiet, "checkpoint": args.checkpoint}
        options |= {"every": args.every}
        if args.prior != "flow":
            options["ema"] = 0.999 if args.ema is None else args.ema
        if args.autocast is not None:
            options["autocast"] = getattr(torch, args.autocast)
        start = time.perf_counter()
        try:
            losses = prior.fit(data, **options)
        except FloatingPointError as error:
            raise ValueError(f"{error} (--lr, --clip)") from None
        seconds = time.perf_counter() - start
        if rank == 0:
            prior.to("cpu").save(out)
        last = losses[-100:]
        timing = f"this run took {seconds:.1f} s" if resumed else f"{seconds:.1f} s"
        if not resumed:
            timing += f", {len(losses) / max(seconds, 1e-9):.1f} steps/s"
        say(
            f"{len(losses)} steps ({timing}); mean loss of the last {len(last)}: "
            f"{sum(last) / len(last):.4g}"
        )
        say(f"saved to {out} (load it with condgen.priors.load)")
    finally:
        if distributed.is_available() and distributed.is_initialized():
            distributed.destroy_process_group()
    return 0


def _check_checkpoint_shared(
    exists: bool, world: int, device: torch.device, checkpoint: str
) -> None:
    r"""Refuses a ``--checkpoint`` that some ranks of a data-parallel fit see and others do
    not (a local path on several nodes): they would resume from different steps."""
    from torch import distributed

    count = torch.tensor([int(exists)], device=device)
    distributed.all_reduce(count)
    if 0 < count.item() < world:
        raise ValueError(
            f"--checkpoint {checkpoint!r} exists for {count.item()} of the {world} processes: "
            f"put it on a file system that every node shares"
        )


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
    _train_parser(commands)
    return parser


def _train_parser(commands: Any) -> None:
    r"""Adds ``condgen train`` to the subcommands ``commands``."""
    run = commands.add_parser(
        "train",
        help="fit a prior to the samples of a tensor file and save it (torchrun: data-parallel)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fits a prior to the samples in DATA and saves it to --out, for "
        "condgen.priors.load.\n\n"
        "Vectors [N, d] get condgen's residual MLP (--hidden) or a zuko flow (--prior flow); "
        "images [N, C, H, W] get condgen's UNet (--base, --levels). The fit is that of the "
        "Python API with the same options and seed: DiffusionPrior.fit / FlowMatchingPrior.fit "
        "(AdamW, clipping, EMA, minibatches drawn with replacement) or FlowPrior.fit (maximum "
        "likelihood). Standardise the samples first: the priors assume roughly unit scale.\n\n"
        "Under torchrun the fit is data-parallel: every process takes its share of each "
        "global minibatch of --batch-size and the gradients are averaged, so K processes fit "
        "the weights of one (to float rounding); only rank 0 prints and writes. With "
        "--checkpoint the fit is resumable: rerun the same command after a kill.",
        epilog="examples:\n"
        "  condgen train samples.npy --out prior.pt --steps 5000\n"
        "  condgen train images.pt --prior flow-matching --base 64 --out prior.pt\n"
        "  condgen train samples.pt --prior flow --flow nsf --transforms 5 --out flow.pt\n"
        "  condgen train samples.pt --out prior.pt --checkpoint fit.ckpt --every 500\n"
        "  torchrun --nproc_per_node=4 -m condgen train samples.pt --out prior.pt "
        "--batch-size 1024",
    )
    run.add_argument(
        "data",
        metavar="DATA",
        help="the samples, shaped [N, *event]: a .pt file holding one tensor (read with "
        "weights_only=True) or a NumPy .npy file",
    )
    run.add_argument("--out", required=True, help="the file to save the fitted prior to")
    run.add_argument(
        "--prior",
        choices=PRIORS,
        default="diffusion",
        help="the kind of prior (default diffusion)",
    )
    network = run.add_argument_group("network")
    network.add_argument(
        "--hidden",
        type=int,
        nargs="+",
        metavar="WIDTH",
        help="hidden widths of the MLP (default 256 256 256) or of a flow's networks "
        "(zuko's default 64 64)",
    )
    network.add_argument(
        "--base", type=int, help="the UNet's feature maps at full resolution (default 32)"
    )
    network.add_argument(
        "--levels", type=int, help="the UNet's halvings of the resolution (default 2)"
    )
    network.add_argument(
        "--schedule",
        choices=["vp", "ve", "cosine", "rectified"],
        help="the diffusion path (default vp)",
    )
    network.add_argument(
        "--prediction",
        choices=["denoiser", "noise", "velocity"],
        help="what the diffusion network predicts (default denoiser)",
    )
    network.add_argument(
        "--flow",
        choices=sorted(FLOW_CLASSES),
        help="zuko's flow class of --prior flow (default nsf)",
    )
    network.add_argument("--transforms", type=int, help="the flow's transforms (zuko's default 3)")
    fit = run.add_argument_group("fit")
    fit.add_argument("--steps", type=int, default=2000, help="optimisation steps (default 2000)")
    fit.add_argument(
        "--batch-size",
        type=int,
        default=256,
        help="the global minibatch, shared by the processes of a torchrun (default 256)",
    )
    fit.add_argument("--lr", type=float, default=1e-3, help="AdamW's learning rate (default 1e-3)")
    fit.add_argument(
        "--weight-decay", type=float, default=0.0, help="AdamW's weight decay (default 0)"
    )
    fit.add_argument(
        "--clip", type=float, default=1.0, help="the maximum gradient norm; 0: none (default 1)"
    )
    fit.add_argument(
        "--ema",
        type=float,
        help="the decay of the weights' moving average that the prior keeps; 0: the raw "
        "weights (default 0.999; not for flows)",
    )
    fit.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the initial weights and of the fit (default 0)",
    )
    fit.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="make the fit resumable: write its state to PATH, and go on from PATH when it "
        "exists (it must be written by the same command)",
    )
    fit.add_argument(
        "--every", type=int, metavar="N", help="steps between checkpoints (default 100)"
    )
    machine = run.add_argument_group("machine")
    machine.add_argument(
        "--device",
        help="cpu, cuda or cuda:INDEX (default cuda when there is one; under torchrun, cuda "
        "is the process's LOCAL_RANK)",
    )
    machine.add_argument(
        "--dtype", choices=["float32", "float64"], default="float32", help="(default float32)"
    )
    machine.add_argument(
        "--autocast",
        choices=["bfloat16"],
        help="compute the losses in mixed precision, under torch.autocast on CUDA or the CPU "
        "(the weights, gradients and optimiser stay float32; default: none)",
    )
    machine.add_argument(
        "--threads",
        type=int,
        help="torch threads of each process (default torch's: OMP_NUM_THREADS, which torchrun "
        "sets to 1, else one per core)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar and no printing")
    run.set_defaults(handler=_train_command)


def main(argv: Sequence[str] | None = None) -> int:
    r"""Runs the ``condgen`` command line with ``argv`` (default ``sys.argv[1:]``)."""
    args = _parser().parse_args(argv)
    # the tasks' models are small: intra-op threads only contend (several-fold slower SVI);
    # train takes --threads, by default torch's own
    threads = args.threads if args.command == "train" else 1
    try:
        if threads is not None:
            torch.set_num_threads(as_count("--threads", threads))
        return args.handler(args)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"condgen {args.command}: error: {error}", file=sys.stderr)
        return 2


def _interactive() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
