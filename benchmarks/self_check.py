r"""Does ``smc`` know when it is wrong? Its accuracy, cost and self-check (R-hat across its
independent runs, bulk ESS, the spread of the runs' log evidence) on the Gaussian-mixture
inverse problems (see "Gaussian-mixture inverse problem"), against exact posterior draws and the
exact log evidence, beside ``tds``.

For each problem (d, d_y, seed) four samplers run with the same particles: ``smc`` (the
default exact sampler), ``tds`` (the twisted diffusion sampler), ``CovarianceSMC`` (whose
transition carries Cov[x | x_t], from two VJPs a step) at a third of the steps, hence the same
cost as ``smc``, and ``smc`` with the quality target ``SMC(rhat=1.01)``, which doubles its
particles until no check warns (up to 8 times as many). Each run is scored by

* the sliced Wasserstein distance (SW) of its draws (resampled to as many equally weighted
  draws as the reference has) to exact posterior draws, against the floor: the distance
  between two independent sets of exact draws of that size;
* its cost per requested particle: denoiser evaluations (NFE) and vector-Jacobian products
  (VJPs), each counted as one network evaluation, from the samplers' stats ``nfe`` and
  ``vjp`` (no sampler takes a Jacobian-vector product);
* whether it warned (``stats["warnings"]``), its R-hat, and the z-score of its log evidence,
  ``(log_evidence - exact) / log_evidence_se``.

The self-check: a run more than 0.25 above the floor that did not warn is a silent failure
(target: none); a run within 0.25 of the floor that warned is a false alarm (target: at most
1 in 5 of those runs).

Run from the repository root::

    python benchmarks/self_check.py                 # d in {8, 80}, d_y in {1, 2, 4}, 10 seeds
    python benchmarks/self_check.py --dims 8        # d = 8 only
    python benchmarks/self_check.py --quick         # smoke run (printed only), under a minute

One row per run is written to ``self_check.csv`` in ``--out-dir`` (default: a new temporary
folder); the report is printed and written to ``docs/benchmarks.md`` (section "Self-check of
the SMC samplers"; other sections are kept).
"""

# ruff: noqa: RUF001 - the Markdown report writes σ, × and ≤ on purpose

from __future__ import annotations

import argparse
import csv
import datetime
import math
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from common import DOCS, machine, publish, reproduce
from torch import Tensor

import condgen as cg
from condgen.evaluate import GaussianMixtureInverseProblem, sliced_wasserstein
from condgen.methods import SMC, TDS, CovarianceSMC, MomentTwistSMC

SECTION = "Self-check of the SMC samplers"
NUM_PROJECTIONS = 1024  # as "Gaussian-mixture inverse problem"
MARGIN = 0.25  # a run is accurate when its SW is at most floor + MARGIN
TDS_MARGIN = 0.1  # smc is worse than tds when its SW exceeds tds's by more than this
MAX_FALSE_ALARMS = 0.2  # the target: at most 1 in 5 accurate runs warn
MIN_Z_WITHIN = 0.95  # the target: |z| <= 3 on at least 95% of the problems
MAX_COST_RATIO = 16.0  # the quality target's cost against tds's


def samplers(steps: int, num_samples: int, rhat: float, max_factor: int) -> dict[str, object]:
    r"""The samplers, by label: ``smc``, ``tds``, ``smc`` with the covariance kernel at a third
    of the steps (one pass and two VJPs a step: the same cost as ``smc``), ``smc`` with the
    local-moment twist (one pass and d_y VJPs a step) at half the steps (the cost of ``smc`` at
    d_y = 1) and at all of them, and ``smc`` with the quality target (last: the summary reads
    it there)."""
    return {
        "smc": SMC(steps=steps),
        "tds": TDS(steps=steps),
        "smc (covariance)": CovarianceSMC(steps=max(steps // 3, 1)),
        "smc (moment twist)": MomentTwistSMC(steps=max(steps // 2, 1)),
        f"smc (moment twist, {steps} steps)": MomentTwistSMC(steps=steps),
        f"smc (rhat={rhat:g})": SMC(
            steps=steps, rhat=rhat, max_particles=max_factor * num_samples
        ),
    }


def _kinds(messages: list[str]) -> dict[str, bool]:
    r"""Which checks warned: R-hat, bulk ESS, the spread of the runs' log evidence."""
    return {
        "warn_rhat": any("R-hat" in m for m in messages),
        "warn_ess": any("effective sample size" in m for m in messages),
        "warn_evidence": any("log evidence" in m for m in messages),
    }


def run_one(
    task: GaussianMixtureInverseProblem,
    method,
    num_samples: int,
    seed: int,
    reference: Tensor,
) -> dict:
    r"""One sampler on one problem: its SW to ``reference``, cost per requested particle,
    warnings, R-hat and log evidence; a run that raises is recorded with its error (and counts
    as warned: it did not fail silently)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the ConvergenceWarnings are read from the stats
        start = time.perf_counter()
        try:
            post = cg.condition(
                task.model, task.data, method=method, num_samples=num_samples, seed=seed,
                progress=False,
            )  # fmt: skip
        except (FloatingPointError, RuntimeError, ValueError) as error:
            message = str(error).split(";")[0].split("\n")[0]
            failed = dict.fromkeys(("sw", "cost", "rhat", "z"), math.nan)
            return {**failed, "particles": num_samples, "warned": True, "error": message}
        elapsed = time.perf_counter() - start
    stats = post.stats
    with torch.random.fork_rng():  # the resampling is seeded too: the same run, the same draws
        torch.manual_seed(seed)
        draws = post.resample(num_samples) if post.log_weights is not None else post
        draws = draws.flatten()["x"][:num_samples]
    sw = math.nan
    if bool(torch.isfinite(draws).all()):
        sw = float(sliced_wasserstein(draws, reference, NUM_PROJECTIONS))
    nfe, vjp, jvp = stats["nfe"], stats.get("vjp", 0.0), 0.0  # per requested particle
    exact = task.log_evidence()
    se = stats["log_evidence_se"]
    z = (stats["log_evidence"] - exact) / se if se > 0 else math.nan
    runs = stats["log_evidence_runs"]
    return {
        "sw": sw,
        "attempts": "+".join(str(a) for a in stats.get("attempts", [num_samples])),
        "particles": stats.get("particles", num_samples),
        "nfe_stat": stats.get("nfe"),
        "nfe": nfe,
        "vjp": vjp,
        "jvp": jvp,
        "cost": nfe + vjp + jvp,
        "warned": bool(stats["warnings"]),
        **_kinds(stats["warnings"]),
        "rhat": stats["rhat"],
        "ess_bulk": stats["ess_bulk"],
        "ess": stats["ess"],
        "log_evidence": stats["log_evidence"],
        "log_evidence_se": se,
        "log_evidence_exact": exact,
        "log_evidence_runs_sd": statistics.stdev(runs) if len(runs) > 1 else math.nan,
        "z": z,
        "time": elapsed,
        "error": "",
    }


COLUMNS = [
    "d", "dy", "seed", "sigma_y", "method", "requested", "floor", "sw", "accurate", "attempts",
    "particles", "nfe_stat", "nfe", "vjp", "jvp", "cost", "warned", "warn_rhat", "warn_ess",
    "warn_evidence", "rhat", "ess_bulk", "ess", "log_evidence", "log_evidence_se",
    "log_evidence_exact", "log_evidence_runs_sd", "z", "time", "error",
]  # fmt: skip


def benchmark(args: argparse.Namespace, log=print) -> list[dict]:
    r"""Every sampler on every problem; one record per run (see :data:`COLUMNS`)."""
    records = []
    n = args.particles
    for d in args.dims:
        for dy in args.obs_dims:
            for seed in range(args.seeds):
                start = time.perf_counter()
                task = GaussianMixtureInverseProblem(d, dy, seed=seed)
                reference = task.reference_samples(n, seed=10_000 + seed)["x"]
                second = task.reference_samples(n, seed=20_000 + seed)["x"]
                floor = float(sliced_wasserstein(second, reference, NUM_PROJECTIONS))
                line = []
                runs = samplers(args.steps, n, args.rhat, args.max_factor)
                for label, method in runs.items():
                    result = run_one(task, method, n, seed, reference)
                    accurate = result["sw"] <= floor + MARGIN  # False for NaN
                    record = {
                        "d": d, "dy": dy, "seed": seed, "sigma_y": task.noise, "method": label,
                        "floor": floor, "accurate": accurate, "requested": n, **result,
                    }  # fmt: skip
                    records.append(record)
                    flag = "warned" if result["warned"] else "quiet"
                    line.append(f"{label} {result['sw']:.2f} {flag}")
                log(
                    f"d={d:<3} dy={dy} seed={seed} floor={floor:.2f}: " + ", ".join(line)
                    + f" ({time.perf_counter() - start:.1f} s)"
                )  # fmt: skip
    return records


def write_csv(records: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for record in records:
            writer.writerow({k: record.get(k, "") for k in COLUMNS})


def _ratio(part: int, whole: int) -> str:
    return f"{part}/{whole}" if whole else "—"


def summary(records: list[dict]) -> tuple[str, str]:
    r"""The summary table (one row per d and sampler) and the checks against the targets."""
    labels = list(dict.fromkeys(r["method"] for r in records))
    smc, tds, *_, target = labels
    rows = [
        "| d | sampler | problems | SW ≤ floor + 0.25 | SW > tds + 0.1 | cost / particle "
        "(median, max) | cost / tds (max) | warned | silent failures | false alarms "
        "| \\|z\\| ≤ 3 | R-hat (median, max) |",
        "|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    checks = []
    for d in sorted({r["d"] for r in records}):
        by = {(r["method"], r["dy"], r["seed"]): r for r in records if r["d"] == d}
        problems = sorted({(dy, seed) for _, dy, seed in by})
        total = len(problems)
        figures = {}
        for label in labels:
            runs = [by[label, dy, seed] for dy, seed in problems]
            peers = [by[tds, dy, seed] for dy, seed in problems]
            accurate = sum(r["accurate"] for r in runs)
            worse = sum(r["sw"] > p["sw"] + TDS_MARGIN for r, p in zip(runs, peers, strict=True))
            costs = [r["cost"] for r in runs if math.isfinite(r["cost"])]
            ratios = [
                r["cost"] / p["cost"]
                for r, p in zip(runs, peers, strict=True)
                if math.isfinite(r["cost"]) and math.isfinite(p["cost"])
            ]
            warned = sum(r["warned"] for r in runs)
            silent = sum(not r["accurate"] and not r["warned"] for r in runs)
            alarms = sum(r["accurate"] and r["warned"] for r in runs)
            z_within = sum(abs(r.get("z", math.nan)) <= 3 for r in runs)
            rhats = [r["rhat"] for r in runs if math.isfinite(r.get("rhat", math.nan))]
            figures[label] = {
                "accurate": accurate, "worse": worse, "ratio": max(ratios, default=math.nan),
                "silent": silent, "alarms": alarms, "z": z_within,
            }  # fmt: skip
            rows.append(
                f"| {d} | {label} | {total} | {accurate} | "
                + ("—" if label == tds else str(worse))
                + f" | {statistics.median(costs):.0f}, {max(costs):.0f} | "
                + f"{figures[label]['ratio']:.2f}× | {warned} | {silent} | "
                + f"{_ratio(alarms, accurate)} | {z_within} | "
                + (f"{statistics.median(rhats):.3f}, {max(rhats):.3f} |" if rhats else "— |")
            )
        all_runs = [r for r in records if r["d"] == d]
        accurate = sum(r["accurate"] for r in all_runs)
        silent = sum(figures[label]["silent"] for label in labels)
        alarms = sum(figures[label]["alarms"] for label in labels)
        f, g = figures[smc], figures[target]
        quiet = [r["dy"] for r in all_runs if not r["accurate"] and not r["warned"]]
        by_dy = ", ".join(f"{dy}: {quiet.count(dy)}" for dy in sorted({r["dy"] for r in all_runs}))
        checks.append(
            f"* d = {d}: `{smc}` within floor + {MARGIN} on {f['accurate']}/{total} problems, "
            f"worse than `tds` by > {TDS_MARGIN} on {f['worse']}/{total}, at most "
            f"{f['ratio']:.2f}× tds's cost; `{target}` within on {g['accurate']}/{total} "
            f"(target {total}/{total}), worse than `tds` on {g['worse']}/{total}, at most "
            f"{g['ratio']:.2f}× tds's cost (target ≤ {MAX_COST_RATIO:g}×): "
            f"{_verdict(g['accurate'] == total and g['ratio'] <= MAX_COST_RATIO)}. Self-check "
            f"over all {len(all_runs)} runs: {silent} silent failures (target 0: "
            f"{_verdict(silent == 0)}; by d_y {by_dy}), false alarms on "
            f"{_ratio(alarms, accurate)} accurate runs (target ≤ 1 in 5: "
            f"{_verdict(alarms <= MAX_FALSE_ALARMS * accurate)}). "
            f"Evidence: |z| ≤ 3 on {f['z']}/{total} problems for `{smc}` (target ≥ 95%: "
            f"{_verdict(f['z'] >= MIN_Z_WITHIN * total)})."
        )
    return "\n".join(rows), "\n".join(checks)


def _verdict(passed: bool) -> str:
    return "met" if passed else "**not met**"


def failures_table(records: list[dict]) -> str:
    r"""The problems where a sampler is more than 0.25 above the floor, or ``smc``'s evidence
    is off by more than 3 standard errors: SW, warned (w) or quiet (q), z, per sampler."""
    labels = list(dict.fromkeys(r["method"] for r in records))
    by = {(r["d"], r["dy"], r["seed"], r["method"]): r for r in records}
    problems = sorted({(r["d"], r["dy"], r["seed"]) for r in records})
    header = " | ".join(f"{label}: SW, warned, z" for label in labels)
    rows = [
        f"| d | d_y | seed | σ_y | floor | {header} |",
        "|---:|---:|---:|---:|---:|" + "---|" * len(labels),
    ]

    def cell(r: dict) -> str:
        if r.get("error"):
            return f"failed ({r['error']})"
        mark = "**" if not r["accurate"] else ""
        flag = "w" if r["warned"] else ("**q**" if not r["accurate"] else "q")
        particles = f", {r['particles']} particles" if r["particles"] != r["requested"] else ""
        return f"{mark}{r['sw']:.2f}{mark}, {flag}, {r['z']:+.1f}{particles}"

    for d, dy, seed in problems:
        runs = [by[d, dy, seed, label] for label in labels]
        if all(r["accurate"] for r in runs) and abs(runs[0].get("z", math.nan)) <= 3:
            continue
        rows.append(
            f"| {d} | {dy} | {seed} | {runs[0]['sigma_y']:.3f} | {runs[0]['floor']:.2f} | "
            + " | ".join(cell(r) for r in runs)
            + " |"
        )
    if len(rows) == 2:
        return "None: every run is within floor + 0.25 and every |z| of `smc` is at most 3."
    return "\n".join(rows)


PROTOCOL = """\
The problems of "Gaussian-mixture inverse problem" (`GaussianMixtureInverseProblem(d, d_y,
seed)`: a 25-component mixture prior, y = A x + σ_y n) at d in <dims>, d_y in <obs_dims>, seeds
0 to <last_seed>. Six samplers per problem, each with <particles> particles (split among 4
independent runs) and <steps> steps unless said: `smc` (the default exact sampler), `tds` (the
twisted diffusion sampler, snr twist), `smc (covariance)` (`CovarianceSMC`, whose transition
carries Cov[x | x_t] from two VJPs a step, at a third of the steps: the cost of `smc`),
`smc (moment twist)` (`MomentTwistSMC`, whose twist carries A Cov[x | x_t] Aᵀ from d_y VJPs a
step, at half the steps: the cost of `smc` at d_y = 1) and at all the steps, and `smc` with
the quality target `SMC(rhat=<rhat>)`, which
doubles its particles until none of its checks warns, up to <factor>× (R-hat across the runs
above the target, bulk ESS below 100, or standard deviation of the runs' log evidence above 1;
without a target R-hat is checked at 1.05).

* SW: sliced Wasserstein distance (SW₂, <projections> directions) of the draws, resampled to
  <particles> equally weighted draws, to <particles> exact posterior draws; the floor is that of
  a second, independent set of <particles> exact draws (the same reference and floor as
  "Gaussian-mixture inverse problem"). A run is accurate when SW ≤ floor + 0.25; "SW > tds +
  0.1" counts the problems where the sampler is worse than `tds` by more than 0.1.
* Cost per requested particle: denoiser evaluations (NFE) plus vector-Jacobian products
  (VJPs), each counted as one network evaluation, from the samplers' stats `nfe` and `vjp`.
  `smc`: one denoiser call per particle and step and one at the end, no gradient; `tds`: a
  denoiser call and its VJP per particle at each of the <steps1> times (<tds_cost> in all; a VJP
  of a network costs about twice a forward pass, so this count is lenient to `tds`);
  `smc (covariance)`: a denoiser call and two VJPs a step at a third of the steps;
  `smc (moment twist)`: a denoiser call and d_y VJPs a step; the quality
  target counts every attempt, per requested particle. No sampler takes a JVP.
* Self-check: warned = `post.stats["warnings"]` is not empty. A silent failure is a run above
  floor + 0.25 that did not warn (target 0); a false alarm a run within floor + 0.25 that warned
  (target at most 1 in 5 of those runs).
* Evidence: z = (log_evidence − log p(y)) / log_evidence_se, with the exact log p(y) of the
  mixture; the target is |z| ≤ 3 on at least 95% of the problems for `smc`. The estimate is of
  the discretised path's evidence, and its standard error comes from the 4 runs' spread.
"""


def _without_out_dir(argv: list[str]) -> list[str]:
    r"""The options less ``--out-dir PATH`` (a rerun writes its CSV wherever it is told)."""
    shown, skip = [], False
    for arg in argv:
        if skip or arg == "--out-dir":
            skip = not skip
        elif not arg.startswith("--out-dir="):
            shown.append(arg)
    return shown


def report(records: list[dict], args: argparse.Namespace) -> str:
    r"""The Markdown section: machine, date, command, protocol, summary, checks, failures."""
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    table, checks = summary(records)
    protocol = (
        PROTOCOL.replace("<dims>", str(set(args.dims)))
        .replace("<obs_dims>", str(set(args.obs_dims)))
        .replace("<last_seed>", str(args.seeds - 1))
        .replace("<particles>", str(args.particles))
        .replace("<steps1>", str(args.steps + 1))
        .replace("<steps>", str(args.steps))
        .replace("<tds_cost>", str(2 * (args.steps + 1)))
        .replace("<rhat>", f"{args.rhat:g}")
        .replace("<factor>", str(args.max_factor))
        .replace("<projections>", str(NUM_PROJECTIONS))
    )
    return "\n".join(
        [
            f"## {SECTION}",
            "",
            f"Run on {date}: {machine()}.",
            "",
            "Reproduce (from the repository root; one row per run goes to `--out-dir`):",
            "",
            "```bash",
            reproduce("self_check.py", _without_out_dir(args.argv)),
            "```",
            "",
            protocol.rstrip(),
            "",
            table,
            "",
            checks,
            "",
            "Problems where a sampler is more than 0.25 above the floor (SW in bold) or `smc`'s "
            "|z| exceeds 3: SW, warned (w) or quiet (q; in bold when the run failed silently), "
            "z, and the particles of the last attempt where the target doubled them.",
            "",
            failures_table(records),
            "",
        ]
    )


def parse(argv: list[str]) -> argparse.Namespace:
    r"""Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[8, 80], help="d")
    parser.add_argument("--obs-dims", type=int, nargs="+", default=[1, 2, 4], help="d_y")
    parser.add_argument("--seeds", type=int, default=10, help="problems per (d, d_y)")
    parser.add_argument("--particles", type=int, default=1000, help="particles and draws")
    parser.add_argument("--steps", type=int, default=100, help="sampler steps")
    parser.add_argument("--rhat", type=float, default=1.01, help="the quality target")
    parser.add_argument("--max-factor", type=int, default=8, help="its cap, × particles")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out-dir", type=Path, default=None, help="CSV folder (default: temp)")
    parser.add_argument("--output", type=Path, default=None, help=f"default {DOCS}")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--quick", action="store_true", help="smoke run (under a minute)")
    args = parser.parse_args(argv)
    args.argv = argv
    if args.quick:
        args.dims, args.obs_dims, args.seeds = [8], [1, 4], 2
        args.particles, args.steps = 256, 50
    if args.output is None and not args.quick:
        args.output = DOCS
    if any(d % 2 for d in args.dims):
        parser.error("--dims must be even (the means repeat a 2-D grid)")
    return args


def main(argv: list[str] | None = None) -> str:
    r"""Runs the benchmark, writes the CSV, prints the report and writes it (unless ``--quick``
    without ``--output``, or ``--no-write``)."""
    args = parse(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    print(f"machine: {machine()}")
    print(
        f"running d={args.dims} d_y={args.obs_dims} seeds={args.seeds} "
        f"particles={args.particles} steps={args.steps} rhat={args.rhat}"
    )
    records = benchmark(args)
    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="self_check_"))
    write_csv(records, out_dir / "self_check.csv")
    print(f"per-run rows: {out_dir / 'self_check.csv'}")
    text = report(records, args)
    return publish(text, args, start)


if __name__ == "__main__":
    main()
