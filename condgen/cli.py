r"""The ``condgen`` command line: ``condgen demo``."""

from __future__ import annotations

__all__ = ["demo", "main"]

import argparse
import os
import sys
import time
from collections.abc import Sequence

from .evaluate.compare import Report, compare
from .evaluate.tasks import BayesianLinearRegression, BetaBinomial
from .methods import NUTS, SVI, Importance


def demo(num_samples: int = 1000, seed: int = 0, progress: bool = False) -> list[Report]:
    r"""The embedded default comparison: every registered Bayesian method on two models with
    exact posteriors (a Bayesian linear regression and a constrained Beta-Binomial).

    Returns:
        One :class:`~condgen.evaluate.Report` per task.
    """
    methods = {
        "nuts": NUTS(num_chains=4, warmup_steps=300),
        "svi (mvn)": SVI(guide="mvn", num_steps=1500),
        "svi (normal)": SVI(guide="normal", num_steps=1500),
        "importance (guide)": Importance(proposal="guide", num_steps=1500),
        "importance (prior)": Importance(proposal="prior"),
    }
    reports = []
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
    args = parser.parse_args(argv)
    if args.command == "demo":
        start = time.perf_counter()
        print(
            "condgen demo: each method against the exact posterior "
            "(mean_err: worst |mean error| / posterior sd; sd_ratio: 1 is right; "
            "sw: sliced Wasserstein)\n",
            flush=True,
        )
        for report in demo(args.num_samples, args.seed, args.progress or _interactive()):
            print(report, end="\n\n", flush=True)
        print(f"total time: {time.perf_counter() - start:.1f} s")
    return 0


def _interactive() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
