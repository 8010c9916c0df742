r"""The runs behind the defaults of the amortized estimators (docs/benchmarks.md, "Defaults of the
amortized estimators"): one estimator on one of sbibm's tasks, trained on the same simulations
with each set of options given, scored at sbibm's observations 1 to 3.

Each variant is ``label|fit options|estimator options``, the options as JSON objects (either may
be left out), e.g.::

    python benchmarks/estimator_defaults.py two_moons npe 10000 default \
        'small|{"batch_size": 512, "lr": 2e-3}|{"transforms": 3, "hidden_features": [128, 128]}'

For each variant the estimator is made with ``torch.manual_seed(0)``, trained by
``fit(simulations=..., seed=1, **fit_options)`` on 10,000 (``N``) simulations drawn once with
seed 0, and its 10,000 draws at each observation are scored by condgen's ``c2st`` against
10,000 of sbibm's reference draws; one line is printed per variant: training seconds (one
thread), epochs, the lowest validation loss and the C2ST (mean and per observation). Run it
alone on the machine when the times matter.

References:
    | Benchmarking Simulation-Based Inference (Lueckmann et al., 2021)
    | https://arxiv.org/abs/2101.04653
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings

# sbibm's data files are found through the installed package (see benchmarks/sbibm.py).
sys.path.append(sys.path.pop(0))

import torch

from condgen.evaluate import c2st, get_task
from condgen.infer import FMPE, NPE, NPSE

ESTIMATORS = {"npe": NPE, "fmpe": FMPE, "npse": NPSE}


def variant(text: str) -> tuple[str, dict, dict]:
    r"""``label|fit options|estimator options`` as the label and the two option dicts."""
    label, fit, init = [*text.split("|", 2), "", ""][:3]
    return label, json.loads(fit or "{}"), json.loads(init or "{}")


def main(argv: list[str] | None = None) -> None:
    r"""Trains and scores each variant, printing a line each."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("task", help="sbibm's name of the task, e.g. two_moons")
    parser.add_argument("estimator", choices=ESTIMATORS)
    parser.add_argument("simulations", type=int)
    parser.add_argument("variants", nargs="+", type=variant, help="label|fit JSON|init JSON")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    tasks = [get_task(args.task, observation=k) for k in (1, 2, 3)]
    cls = ESTIMATORS[args.estimator]
    simulations = NPE(tasks[0].model, observed=["x"]).simulate(args.simulations, seed=0)
    for label, fit, init in args.variants:
        torch.manual_seed(0)
        estimator = cls(tasks[0].model, observed=["x"], **init)
        start = time.perf_counter()
        estimator.fit(simulations=simulations, progress=False, seed=1, **fit)
        seconds = time.perf_counter() - start
        scores = []
        for task in tasks:
            with torch.no_grad():
                draws = estimator.sample(task.data, 10_000)["theta"]
            scores.append(float(c2st(task.sbibm_samples(10_000)["theta"], draws)))
        print(
            f"{args.task} {args.estimator} N={args.simulations} {label}: {seconds:.1f} s, "
            f"{len(estimator.training_losses)} epochs, best validation loss "
            f"{min(estimator.validation_losses):.4f}, C2ST {statistics.fmean(scores):.3f} "
            f"{[round(s, 3) for s in scores]}",
            flush=True,
        )


if __name__ == "__main__":
    main()
