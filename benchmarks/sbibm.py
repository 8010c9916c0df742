r"""condgen's amortized estimators (NPE, FMPE, NPSE) on the simulation-based inference
benchmark's tasks, amortized and with sequential rounds, beside sbibm's published figures.

For each task (sbibm's names: two_moons, slcp, gaussian_linear, gaussian_mixture,
gaussian_linear_uniform, bernoulli_glm, sir, lotka_volterra; ``condgen.evaluate.get_task``),
estimator, budget :math:`N` and mode:

* ``amortized``: ``Estimator(task.model, observed=["x"])`` with its defaults, trained once by
  ``fit(num_simulations=N, seed=seed)`` and conditioned on each of sbibm's observations;
* ``sequential``: the same estimator trained for each observation by ``fit(num_simulations=N,
  rounds=R, x_o=task.data, seed=seed)`` (truncated sequential estimation, TSNPE), the budget
  :math:`N` counted over the :math:`R` rounds.

The draws are scored by a classifier two-sample test against sbibm's 10,000 reference draws of
the observation: 0.5 is indistinguishable, 1 disjoint. sbibm's published figures (Lueckmann et
al., 2021, the ``main_paper.csv`` of github.com/sbi-benchmark/results; for the Gaussian mixture
its rerun with the corrected task, ``gaussian_mixture_rerun.csv``, whose observations sbibm
1.1.0 ships) are means over the same 10 observations of sbibm's C2ST (scikit-learn's MLP,
``condgen.evaluate.sbibm_c2st``). ``--metric c2st`` (the default) scores with condgen's torch
version of the same test (the same MLP, z-scoring and 5 folds, trained on full batches for a
fixed number of epochs), which costs seconds rather than minutes in 10 dimensions; the report
states which metric it used, and ``--metric sbibm`` reproduces sbibm's exactly.

Every finished cell (task, estimator, mode, budget, seed, observation) is appended to a JSON
Lines file (``--results``, by default ``benchmarks/results/sbibm.jsonl``, kept in the
repository) and skipped when the script runs again: the benchmark takes hours on 2 cores and
can be run a few tasks at a time, across sessions. The report is made from every record of the
file that matches the options' metric and number of draws.

Run from the repository root, alone on the machine (training times are reported)::

    pip install --no-deps sbibm          # sbibm's observations and reference draws
    python benchmarks/sbibm.py           # everything: hours on 2 cores
    python benchmarks/sbibm.py --tasks two_moons slcp --modes amortized
    python benchmarks/sbibm.py --report  # the report from the stored records only
    python benchmarks/sbibm.py --quick   # smoke run (printed only, nothing stored)

The Markdown report is printed and written to ``docs/benchmarks.md`` (section "sbibm's tasks:
amortized and sequential estimators"; other sections are kept).

References:
    | Benchmarking Simulation-Based Inference (Lueckmann et al., 2021)
    | https://arxiv.org/abs/2101.04653

    | Truncated proposals for scalable and hassle-free simulation-based inference (Deistler et
      al., 2022)
    | https://arxiv.org/abs/2210.04815
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

# This script's name is the sbibm package's: search the installed package (its data files)
# before this folder, which Python puts first on the path of a script.
sys.path.append(sys.path.pop(0))

import torch
from common import arguments, begin, heading, machine, publish, reproduce
from sbibm_reference import TASKS

from condgen.evaluate import c2st, get_task, sbibm_c2st
from condgen.infer import FMPE, NPE, NPSE

SECTION = "sbibm's tasks: amortized and sequential estimators"
RESULTS = Path(__file__).resolve().parent / "results" / "sbibm.jsonl"
ESTIMATORS = {"npe": NPE, "fmpe": FMPE, "npse": NPSE}
MODES = ("amortized", "sequential")
PUBLISHED: dict[str, dict[int, tuple[float, str, float]]] = {
    "two_moons": {1000: (0.725, "SNPE", 0.643), 10_000: (0.606, "SNPE", 0.554)},
    "slcp": {1000: (0.975, "SNLE", 0.921), 10_000: (0.901, "SNLE", 0.713)},
    "gaussian_linear": {1000: (0.694, "SNLE", 0.628), 10_000: (0.552, "SNRE", 0.536)},
    "gaussian_mixture": {1000: (0.716, "SNPE", 0.669), 10_000: (0.615, "SNPE", 0.551)},
    "gaussian_linear_uniform": {1000: (0.696, "SNPE", 0.631), 10_000: (0.553, "SNPE", 0.527)},
    "bernoulli_glm": {1000: (0.863, "SNLE", 0.634), 10_000: (0.678, "SNLE", 0.553)},
    "sir": {1000: (0.815, "SNRE", 0.637), 10_000: (0.680, "SNPE", 0.561)},
    "lotka_volterra": {1000: (0.999, "SNLE", 0.909), 10_000: (0.997, "SNLE", 0.738)},
}
r"""sbibm's published mean C2ST over its 10 observations, by task and budget: NPE's, and the
best method's name and figure (among NPE, SNPE, NLE, SNLE, NRE, SNRE, REJ-ABC and SMC-ABC)."""
METRIC_NAMES = {
    "c2st": "condgen's `c2st` (sbibm's recipe in torch)",
    "sbibm": "sbibm's C2ST (`sbibm_c2st`)",
}


def key(record: dict) -> tuple:
    r"""What identifies a cell of the benchmark."""
    names = ("task", "estimator", "mode", "budget", "seed", "observation", "metric", "samples")
    return tuple(record[name] for name in names)


def stored(path: Path) -> list[dict]:
    r"""The records of the results file (none if it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def score(args: argparse.Namespace, task, draws: torch.Tensor) -> float:
    r"""The C2ST of ``draws`` against ``args.samples`` of sbibm's reference draws."""
    reference = task.sbibm_samples(args.samples, seed=args.seed)["theta"]
    draws = draws.detach().to("cpu", reference.dtype)
    if args.metric == "sbibm":
        return sbibm_c2st(reference, draws)
    return float(c2st(reference, draws, seed=args.seed))


def run_cell(
    args: argparse.Namespace, name: str, estimator: str, mode: str, budget: int, todo: list[int]
) -> Iterator[dict]:
    r"""Trains and scores one estimator on ``todo`` observations of a task: once for all of
    them (amortized) or once each (sequential). Yields a record per observation as it ends
    (an amortized fit is seeded, so a run that stopped part-way trains the same estimator
    again for the observations left)."""
    fitted = None
    for k in todo:
        task = get_task(name, observation=k)
        if fitted is None or mode == "sequential":
            torch.manual_seed(args.seed)  # the initial weights
            fitted = ESTIMATORS[estimator](task.model, observed=["x"])
            options = {"rounds": args.rounds, "x_o": task.data} if mode == "sequential" else {}
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fitted.fit(budget, progress=False, seed=args.seed, **options)
            seconds = time.perf_counter() - start
        start = time.perf_counter()
        with torch.no_grad():
            draws = fitted.sample(task.data, args.samples)["theta"]
        sampling = time.perf_counter() - start
        finite = torch.isfinite(draws).all(-1)
        record = {
            "task": name,
            "estimator": estimator,
            "mode": mode,
            "budget": budget,
            "seed": args.seed,
            "observation": k,
            "metric": args.metric,
            "samples": args.samples,
            "rounds": args.rounds if mode == "sequential" else 1,
            "c2st": score(args, task, draws[finite]) if finite.all() else 1.0,
            "nonfinite": int((~finite).sum()),
            "training_s": seconds,
            "sampling_s": sampling,
            "epochs": len(fitted.training_losses),
            "commit": args.commit,
        }
        print(json.dumps(record), flush=True)
        yield record


def measure(args: argparse.Namespace) -> list[dict]:
    r"""Runs the cells the results file lacks, storing each observation's record as it ends;
    returns all records."""
    records = stored(args.results)
    done = {key(r) for r in records}
    for name in args.tasks:
        for estimator in args.estimators:
            for mode in args.modes:
                for budget in args.budgets:
                    cell = (name, estimator, mode, budget, args.seed)
                    extra = (args.metric, args.samples)
                    todo = [k for k in args.observations if (*cell, k, *extra) not in done]
                    if not todo or args.report:
                        continue
                    for record in run_cell(args, name, estimator, mode, budget, todo):
                        records.append(record)
                        if args.store:
                            args.results.parent.mkdir(parents=True, exist_ok=True)
                            with args.results.open("a") as stream:
                                stream.write(json.dumps(record) + "\n")
    return records


def summary(values: list[float]) -> str:
    r"""The mean and its standard error, with the count when it is not 10."""
    mean = statistics.fmean(values)
    error = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    count = "" if len(values) == 10 else f" (n={len(values)})"
    return f"{mean:.3f} ± {error:.3f}{count}"


def report(records: list[dict], args: argparse.Namespace, machine_line: str) -> str:
    r"""The Markdown section: the mean C2ST over observations of each task, estimator and mode
    at each budget, beside sbibm's NPE and best method, and the issue's two criteria."""
    records = [
        r
        for r in records
        if r["metric"] == args.metric and r["samples"] == args.samples and r["seed"] == args.seed
    ]
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["task"], r["estimator"], r["mode"], r["budget"]), []).append(r)
    budgets = sorted({r["budget"] for r in records})
    argv = [a for i, a in enumerate(args.argv) if "--note" not in args.argv[max(i - 1, 0) : i + 1]]
    lines = heading(SECTION, machine_line, reproduce("sbibm.py", argv))
    lines += [
        f"Metric: {METRIC_NAMES[args.metric]}, {args.samples:,} draws against as many of "
        "sbibm's reference draws, mean ± standard error over sbibm's observations (10 unless "
        "n says otherwise). Estimators with their defaults (`condgen.infer.NPE`, `FMPE`, "
        "`NPSE`, `observed=['x']`), seed "
        f"{args.seed}; sequential: `fit(N, rounds=R, x_o=...)` for each observation. "
        "sbibm's columns are the published means (Lueckmann et al., 2021; the Gaussian mixture "
        "from sbibm's rerun of the corrected task): NPE, and the best of all its methods. "
        "✓: at or below sbibm's NPE (amortized rows) or best method (sequential rows). "
        "Training: the mean seconds of one fit (one thread; `training (s)`). The commit is "
        "the one each row's records were measured at.",
        *(["", args.note] if args.note else []),
        "",
        "| task | estimator | mode | "
        + " | ".join(f"C2ST at {b:,} | training (s) at {b:,}" for b in budgets)
        + " | "
        + " | ".join(f"sbibm NPE / best at {b:,}" for b in budgets)
        + " | commit |",
        "|---|---|---|" + "---:|---:|" * len(budgets) + "---|" * len(budgets) + "---|",
    ]
    passed: dict[str, set[str]] = {"amortized": set(), "sequential": set()}
    failed: set[str] = set()
    for name in TASKS:
        for estimator in ESTIMATORS:
            for mode in MODES:
                cells = [groups.get((name, estimator, mode, b)) for b in budgets]
                if not any(cells):
                    continue
                row = [name, estimator.upper(), mode]
                for budget, cell in zip(budgets, cells, strict=True):
                    if not cell:
                        row += ["", ""]
                        continue
                    mean = statistics.fmean(r["c2st"] for r in cell)
                    npe, _, best = PUBLISHED[name].get(budget, (math.nan, "", math.nan))
                    bar = npe if mode == "amortized" else best
                    mark = " ✓" if mean <= bar else ""
                    if budget == 10_000 and len(cell) == 10:
                        if mode == "amortized" and mean > npe:
                            failed.add(f"{name} {estimator.upper()}")
                        if mean <= bar:
                            passed[mode].add(name)
                    fits = statistics.fmean({r["training_s"] for r in cell})
                    row += [summary([r["c2st"] for r in cell]) + mark, f"{fits:.0f}"]
                for budget in budgets:
                    npe, method, best = PUBLISHED[name].get(budget, (math.nan, "-", math.nan))
                    row.append(f"{npe:.3f} / {best:.3f} ({method})")
                row.append(", ".join(sorted({r["commit"] for c in cells if c for r in c})))
                lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "At 10,000 simulations, over the tasks with all 10 observations scored: amortized "
        "rows above sbibm's NPE: " + (", ".join(sorted(failed)) or "none") + "; tasks where "
        "a sequential estimator is at or below sbibm's best method: "
        + (", ".join(sorted(passed["sequential"])) or "none")
        + f" ({len(passed['sequential'])} of {len(TASKS)}).",
    ]
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    r"""Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--estimators", nargs="+", default=list(ESTIMATORS), choices=ESTIMATORS)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--budgets", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument(
        "--observations", type=int, nargs="+", default=list(range(1, 11)), help="1-10"
    )
    parser.add_argument("--rounds", type=int, default=4, help="rounds of the sequential mode")
    parser.add_argument("--samples", type=int, default=10_000, help="draws, at most 1e4")
    parser.add_argument("--metric", choices=tuple(METRIC_NAMES), default="c2st")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=RESULTS, help="the JSON Lines file")
    parser.add_argument("--report", action="store_true", help="report the stored records only")
    parser.add_argument("--note", default="", help="a paragraph added to the report")

    def small(args: argparse.Namespace) -> dict:
        return {
            "tasks": ["two_moons"],
            "estimators": ["npe"],
            "budgets": [500],
            "observations": [1, 2],
            "rounds": 2,
            "samples": 1000,
        }

    args = arguments(parser, argv, small, quick_help="smoke run (printed only)", threads=1)
    args.store = not args.quick
    return args


def main(argv: list[str] | None = None) -> str:
    r"""Runs the missing cells, prints the report and writes it (unless ``--quick`` without
    ``--output``, or ``--no-write``)."""
    args = parse(argv)
    line, start = begin(args, machine)
    args.commit = line.split("condgen commit ")[1].split(",")[0]
    return publish(report(measure(args), args, line), args, start)


if __name__ == "__main__":
    main()
