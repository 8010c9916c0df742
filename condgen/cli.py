r"""The ``condgen`` command line: ``condgen demo``."""

from __future__ import annotations

__all__ = ["demo", "main"]

import argparse
import os
import sys
import time
import warnings
from collections.abc import Sequence

import torch

from .evaluate.compare import Report, compare
from .evaluate.plots import plot_draws
from .evaluate.tasks import BayesianLinearRegression, BetaBinomial, GaussianMixtureInverseProblem
from .methods import DPS, NUTS, SVI, TDS, Importance, PiGDM


def demo(
    num_samples: int = 1000, seed: int = 0, progress: bool = False, plot: str | None = None
) -> list[Report]:
    r"""The embedded default comparison, against exact posteriors.

    1. A 2-D Gaussian-mixture prior (a stand-in for a learned prior, with its exact denoiser)
       observed through one noisy linear projection, so the posterior is bimodal: NUTS on its
       exact density, TDS, DPS and PiGDM.
    2. The Bayesian methods on a Bayesian linear regression and a constrained Beta-Binomial.

    Arguments:
        num_samples: Draws per method.
        seed: Seed of every run.
        progress: Whether to show progress bars.
        plot: A PNG path for the draws of the mixture task beside the exact posterior.

    Returns:
        One :class:`~condgen.evaluate.Report` per task.
    """
    task = GaussianMixtureInverseProblem.circle(seed=seed)
    reference = task.reference_samples(num_samples, seed=seed + 1)
    mixture = compare(
        task.model,
        task.data,
        methods={
            "nuts": NUTS(num_chains=4, warmup_steps=300),
            "tds": TDS(steps=100),
            "dps": DPS(steps=100),
            "pigdm": PiGDM(steps=100),
        },
        reference=reference,
        num_samples=num_samples,
        seed=seed,
        progress=progress,
        title=f"task: {task.name} (2-D mixture prior, y = x[0] + noise: bimodal posterior)",
    )
    if plot:
        figure = plot_draws(mixture.posteriors, reference["x"], "x", title=mixture.title)
        figure.savefig(plot, dpi=120)
    methods = {
        "nuts": NUTS(num_chains=4, warmup_steps=300),
        "svi (mvn)": SVI(guide="mvn", num_steps=1500),
        "svi (normal)": SVI(guide="normal", num_steps=1500),
        "importance (guide)": Importance(proposal="guide", num_steps=1500),
        "importance (prior)": Importance(proposal="prior"),
    }
    reports = [mixture]
    for task in (BayesianLinearRegression(), BetaBinomial()):
        reports.append(
            compare(
                task.model,
                task.data,
                methods=methods,
                reference=task.reference_samples(20_000, seed=seed),
                num_samples=num_samples,
                seed=seed,
                progress=progress,
                title=f"task: {task.name}",
            )
        )
    return reports


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="condgen", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("demo", help="run the embedded default comparison")
    run.add_argument("--num-samples", type=int, default=1000, help="draws per method")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--progress", action="store_true", help="show progress bars")
    run.add_argument(
        "--plot", default="condgen-demo.png", help="PNG of the mixture task's draws ('' for none)"
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        # the demo's models are tiny: intra-op threads only contend (several-fold slower SVI)
        torch.set_num_threads(1)
        start = time.perf_counter()
        print(
            "condgen demo: each method against the exact posterior "
            "(mean_err: worst |mean error| / posterior sd; sd_ratio: 1 is right; "
            "sw: sliced Wasserstein)\n",
            flush=True,
        )
        progress = args.progress or _interactive()
        with warnings.catch_warnings():  # e.g. Pareto k-hat: the table shows ess instead
            warnings.simplefilter("ignore")
            reports = demo(args.num_samples, args.seed, progress, plot=args.plot or None)
        for report in reports:
            print(report, end="\n\n", flush=True)
        if args.plot:
            print(f"draws of the mixture task beside the exact posterior: {args.plot}")
        print(f"total time: {time.perf_counter() - start:.1f} s")
    return 0


def _interactive() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
