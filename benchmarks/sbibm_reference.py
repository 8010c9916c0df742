r"""The simulation-based inference benchmark's tasks in condgen against sbibm's reference
posteriors: each task's model, conditioned exactly at each of sbibm's 10 observations, scored by
sbibm's C2ST against sbibm's 10,000 reference draws.

For each task of ``condgen.evaluate`` under sbibm's name (two_moons, slcp, gaussian_linear,
gaussian_mixture, gaussian_linear_uniform, bernoulli_glm, sir, lotka_volterra) and observation:

* ``exact``, where the task has an exact sampler (two moons, the Gaussian linear tasks, the
  Gaussian mixture): 10,000 exact draws against sbibm's 10,000;
* ``importance``, where it has none: ``task.reweighted_reference`` -- 200,000 proposals from a
  kernel density of 5,000 of sbibm's draws, weighted by the model's log joint and resampled to
  5,000 -- against sbibm's 5,000 other draws (the effective sample size is reported);
* with ``--methods nuts tempered ...``: ``condgen.condition(task.model, task.data, method=M,
  num_samples=10_000)`` resampled to 10,000, against sbibm's 10,000 (slow: the ODE tasks' NUTS
  takes hours).

The score is sbibm's C2ST (``condgen.evaluate.sbibm_c2st``, scikit-learn's MLP as
``sbibm.metrics.c2st`` computes it): 0.5 means indistinguishable, 1 disjoint. A correct
simulator gives 0.5 up to about 0.5 / sqrt(2N) (0.004 at N = 10,000) plus the classifier's
overfitting. ``--metric c2st`` uses condgen's torch version instead (seconds, not minutes, per
10-D entry).

Run from the repository root::

    pip install --no-deps sbibm scikit-learn     # sbibm's data files; the C2ST's classifier
    python benchmarks/sbibm_reference.py         # 8 tasks x 10 observations: hours on 2 cores
    python benchmarks/sbibm_reference.py --quick # smoke run (printed only)

The Markdown report is printed and written to ``docs/benchmarks.md`` (section "sbibm's tasks
against sbibm's reference posteriors"; other sections are kept).

References:
    | Benchmarking Simulation-Based Inference (Lueckmann et al., 2021)
    | https://arxiv.org/abs/2101.04653
"""

from __future__ import annotations

import argparse
import time

import torch
from common import arguments, benchmark, heading, quiet_condition, reproduce

from condgen.evaluate import c2st, get_task, sbibm_c2st

SECTION = "sbibm's tasks against sbibm's reference posteriors"
METRIC_NAMES = {"sbibm": "sbibm's C2ST (`sbibm_c2st`)", "c2st": "condgen's `c2st`"}
TASKS = (
    "two_moons",
    "slcp",
    "gaussian_linear",
    "gaussian_mixture",
    "gaussian_linear_uniform",
    "bernoulli_glm",
    "sir",
    "lotka_volterra",
)


def draws_and_reference(task, sampler: str, args: argparse.Namespace) -> tuple:
    r"""The task's posterior draws by ``sampler`` beside sbibm's draws, and the effective
    sample size (None for exact draws and methods)."""
    if sampler == "exact":
        n = args.samples
        draws = task.reference_samples(n, seed=args.seed)["theta"]
        return draws, task.sbibm_samples(n, seed=args.seed)["theta"], None
    if sampler == "importance":
        n = args.samples // 2
        return task.reweighted_reference(
            n, seed=args.seed, num_proposals=args.proposals, num_centres=n
        )
    post, _ = quiet_condition(
        task.model, task.data, sampler, num_samples=args.samples, seed=args.seed
    )
    torch.manual_seed(args.seed)  # the resampling's uniforms
    draws = post.resample(args.samples).flatten()["theta"]
    return draws, task.sbibm_samples(args.samples, seed=args.seed)["theta"], None


def measure(args: argparse.Namespace) -> list[dict]:
    r"""One record per task, observation and sampler, printed as it ends."""
    score = sbibm_c2st if args.metric == "sbibm" else lambda x, y: float(c2st(x, y))
    records = []
    for name in args.tasks:
        for observation in args.observations:
            task = get_task(name, observation=observation)
            samplers = ["exact" if task.exact else "importance", *args.methods]
            for sampler in samplers:
                start = time.process_time()
                draws, reference, ess = draws_and_reference(task, sampler, args)
                seconds = time.process_time() - start
                records.append(
                    {
                        "task": name,
                        "observation": observation,
                        "sampler": sampler,
                        "n": len(draws),
                        "ess": ess,
                        "c2st": score(reference, draws),
                        "time": seconds,
                    }
                )
                print(records[-1], flush=True)
    return records


def report(records: list[dict], args: argparse.Namespace, machine_line: str) -> str:
    r"""The Markdown section: one row per task and sampler, the C2ST of each observation."""
    lines = heading(SECTION, machine_line, reproduce("sbibm_reference.py", args.argv))
    lines += [
        "Each task's model (`condgen.evaluate.get_task(name, observation=k)`) conditioned "
        f"exactly at sbibm's observations, scored by {METRIC_NAMES[args.metric]} "
        "against sbibm's reference draws: `exact`, the task's exact sampler (N draws against "
        "sbibm's N); `importance`, `task.reweighted_reference` (a kernel density of N of "
        "sbibm's draws as proposal, weighted by the model's log joint, resampled to N, against "
        f"sbibm's N others; {args.proposals:,} proposals); other rows, `condgen.condition` "
        "with that method. 0.5 is indistinguishable, 1 disjoint. CPU time of the sampler.",
        "",
        "| task | sampler | N | "
        + " | ".join(f"obs {k}" for k in args.observations)
        + " | min ESS | CPU (s) |",
        "|---|---|---:|" + "---:|" * len(args.observations) + "---:|---:|",
    ]
    groups: dict[tuple[str, str], list[dict]] = {}
    for record in records:
        groups.setdefault((record["task"], record["sampler"]), []).append(record)
    for (name, sampler), rows in groups.items():
        scores = " | ".join(f"{r['c2st']:.3f}" for r in rows)
        ess = [r["ess"] for r in rows if r["ess"] is not None]
        least = f"{min(ess):,.0f}" if ess else "-"
        seconds = sum(r["time"] for r in rows)
        lines.append(
            f"| {name} | {sampler} | {rows[0]['n']:,} | {scores} | {least} | {seconds:.0f} |"
        )
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    r"""Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument(
        "--observations", type=int, nargs="+", default=list(range(1, 11)), help="1-10"
    )
    parser.add_argument("--methods", nargs="+", default=[], help="condgen methods to add")
    parser.add_argument("--samples", type=int, default=10_000, help="draws, at most 1e4")
    parser.add_argument("--proposals", type=int, default=200_000, help="importance samples")
    parser.add_argument("--metric", choices=("sbibm", "c2st"), default="sbibm")
    parser.add_argument("--seed", type=int, default=0)

    def small(args: argparse.Namespace) -> dict:
        return {"observations": [1], "samples": 1000, "proposals": 20_000, "metric": "c2st"}

    return arguments(parser, argv, small, quick_help="smoke run (printed only)", threads=1)


def main(argv: list[str] | None = None) -> str:
    r"""Runs the benchmark, prints the report and writes it (unless ``--quick`` without
    ``--output``, or ``--no-write``)."""
    return benchmark(parse(argv), measure, report)


if __name__ == "__main__":
    main()
