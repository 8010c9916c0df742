r"""SLCP, the simulation-based inference benchmark's task of a simple likelihood and a complex
posterior: condgen's samplers on the exact likelihood, scored by sbibm's C2ST against sbibm's
reference posterior draws.

:class:`condgen.evaluate.SLCP` is sbibm's model as a Pyro model (:math:`\theta \sim
\mathcal{U}([-3, 3]^5)`, four iid 2-D Gaussian draws whose mean and covariance are set by
:math:`\theta`) with sbibm's observations; its posterior has four mirror modes (the signs of
:math:`\theta_3` and :math:`\theta_4`). For each observation and method,
``condgen.condition(task.model, task.data, method=M, num_samples=10_000, seed=...)`` runs:

* ``nuts``: 4 chains, the method's default warm-up (500 steps);
* ``tempered``: adaptive tempered SMC (HMC moves, 4 independent runs pooled by their evidence),
  its defaults.

The draws are resampled to 10,000 equally weighted ones (``post.resample(10_000)``) and scored
by sbibm's C2ST (``condgen.evaluate.sbibm_c2st``) against sbibm's 10,000 reference draws of the
observation: as ``sbibm.metrics.c2st`` (sbibm 1.1.0) computes it, both samples z-scored by the
reference's mean and standard deviation, scikit-learn's ``MLPClassifier`` (ReLU, two hidden
layers of :math:`10 d` units, Adam, ``max_iter=10000``, ``random_state=1``), accuracy averaged
over a shuffled 5-fold ``KFold`` (``random_state=1``) by ``cross_val_score``. 0.5 means the
draws cannot be told from the reference, 1 fully distinct. Also reported: the wall time of the
conditioning call, R-hat (``post.stats["rhat"]``), the number of convergence warnings, the
gradient evaluations (``post.stats["nfe"]``) and, for tempered SMC, the log evidence.

Run from the repository root::

    pip install --no-deps sbibm            # observations and reference draws (data files only)
    python benchmarks/slcp.py              # observations 1-3: 30+ minutes on 2 cores (NUTS)
    python benchmarks/slcp.py --quick      # smoke run (printed only), a few minutes

The Markdown report is printed and written to ``docs/benchmarks.md`` (section "SLCP against
sbibm's reference posterior"; other sections are kept).

References:
    | Sequential Neural Likelihood (Papamakarios, Sterratt and Murray, 2019)
    | https://arxiv.org/abs/1805.07226

    | Benchmarking Simulation-Based Inference (Lueckmann et al., 2021)
    | https://arxiv.org/abs/2101.04653
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from common import arguments, benchmark, quiet_condition, reproduce

from condgen.evaluate import SLCP, sbibm_c2st

SECTION = "SLCP against sbibm's reference posterior"
METHODS = ("nuts", "tempered")


def run(task: SLCP, method: str, num_samples: int, seed: int, options: dict) -> dict:
    r"""Conditions the task's model with ``method`` and scores the draws."""
    post, seconds = quiet_condition(
        task.model, task.data, method, num_samples=num_samples, seed=seed, **options
    )
    torch.manual_seed(seed)  # the systematic resampling's uniform
    draws = post.resample(num_samples).flatten()["theta"]
    reference = task.reference_samples(num_samples)["theta"]
    start = time.perf_counter()
    score = sbibm_c2st(reference, draws)
    rhat = post.stats.get("rhat")
    return {
        "c2st": score,
        "c2st_time": time.perf_counter() - start,
        "time": seconds,
        "rhat": math.nan if rhat is None else float(rhat),
        "warnings": len(post.stats.get("warnings", [])),
        "log_evidence": post.stats.get("log_evidence"),
        "nfe": post.stats.get("nfe"),
    }


def _number(value, spec: str) -> str:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return "-" if missing else format(value, spec)


def report(records: list[dict], args: argparse.Namespace, machine_line: str) -> str:
    r"""The Markdown section."""
    warmup = "default warm-up (500 steps)" if args.warmup is None else f"{args.warmup} warm-up"
    lines = [
        f"## {SECTION}",
        "",
        f"Run with `{reproduce('slcp.py', args.argv)}`: {machine_line}.",
        "",
        "`condgen.evaluate.SLCP` (sbibm's SLCP task: θ ~ U([-3, 3]^5), four iid 2-D Gaussian "
        "draws with mean (θ1, θ2), standard deviations θ3², θ4², correlation tanh θ5; four "
        "mirror modes in the signs of θ3 and θ4) at sbibm's observations, conditioned on its "
        f"exact likelihood with {args.samples} draws per run, seed {args.seed}: `nuts` with 4 "
        f"chains and the {warmup}, `tempered` (adaptive tempered SMC) with its defaults. The "
        f"draws, resampled to {args.samples} equally weighted ones, are scored by sbibm's C2ST "
        f"(as `sbibm.metrics.c2st` 1.1.0 computes it) against {args.samples} of sbibm's "
        "reference draws: 0.5 is indistinguishable, 1 fully distinct. Time: the conditioning "
        "call; R-hat as `post.stats['rhat']`; warnings: convergence warnings the run raised; "
        "nfe: `post.stats['nfe']`, gradient evaluations of the log-density, for `nuts` all "
        "leapfrog steps of the 4 chains, for `tempered` per particle (times the number of "
        "particles in all).",
        "",
        "| observation | method | C2ST | time (s) | R-hat | warnings | log evidence | nfe |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        lines.append(
            f"| {r['observation']} | {r['method']} | {r['c2st']:.3f} | {r['time']:.0f} "
            f"| {_number(r['rhat'], '.3f')} | {r['warnings']} "
            f"| {_number(r['log_evidence'], '.2f')} | {_number(r['nfe'], ',.0f')} |"
        )
    return "\n".join(lines)


def measure(args: argparse.Namespace) -> list[dict]:
    r"""Runs each method on each observation; one record each, printed as it ends."""
    records = []
    for observation in args.observations:
        task = SLCP(observation=observation)
        for method in args.methods:
            options = {}
            if method == "nuts":
                options["num_chains"] = 4
                if args.warmup is not None:
                    options["warmup_steps"] = args.warmup
            result = run(task, method, args.samples, args.seed, options)
            records.append({"observation": observation, "method": method, **result})
            print(records[-1], flush=True)
    return records


def parse(argv: list[str] | None) -> argparse.Namespace:
    r"""Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--observations", type=int, nargs="+", default=[1, 2, 3], help="1-10")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--samples", type=int, default=10_000, help="draws per run, at most 1e4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=None, help="NUTS warm-up steps")

    def small(args: argparse.Namespace) -> dict:
        return {"observations": args.observations[:1], "samples": 400, "warmup": 50}

    return arguments(parser, argv, small, quick_help="smoke run (printed only)", threads=1)


def main(argv: list[str] | None = None) -> str:
    r"""Runs the benchmark, prints the report and writes it (unless ``--quick`` without
    ``--output``, or ``--no-write``)."""
    return benchmark(parse(argv), measure, report)


if __name__ == "__main__":
    main()
