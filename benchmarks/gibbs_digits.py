r"""Particle Gibbs on the digits prior: inpainting a held-out 8x8 digit whose noise scale is
unknown, with ``method="gibbs"`` (conditional SMC with ancestor sampling for the 64 pixels,
NUTS for the noise scale), at a few numbers of particles and resampling thresholds.

The model: x ~ the cached digits diffusion prior (64 pixels, `digits_prior`), s ~ HalfNormal(0.5),
y ~ Normal(A x, s) at the observed pixels of `DigitsInpainting` (its mask and test digit), with
y drawn at s = 0.15. Reported per setting: the posterior of s against the truth, the worst
R-hat and the lowest bulk ESS over the 64 pixels across the 4 chains, the mean number of
distinct first-time ancestors of a sweep's final particles, the fraction of sweeps that moved
x, and the ConvergenceWarnings that `condgen.condition` raised.

Run from the repository root::

    python benchmarks/gibbs_digits.py            # 3 settings, about 40 minutes on one core
    python benchmarks/gibbs_digits.py --jobs 3 --warmup 100 --samples 600  # 18 min, 2 cores
    python benchmarks/gibbs_digits.py --quick    # smoke run, printed only

A sweep of 50 steps costs about 0.26 s with 64 particles and 0.8 s with 256 on one core; the
defaults make 1800 sweeps per setting. ``--jobs`` runs the settings in as many processes.

The first run trains the digits prior (about 3 minutes) and caches it. The Markdown report is
printed and written to ``docs/benchmarks.md`` (section "Particle Gibbs on digits").
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
import warnings
from concurrent.futures import ProcessPoolExecutor

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import torch
from common import arguments, machine, publish, reproduce

import condgen as cg
from condgen.diagnostics import ConvergenceWarning
from condgen.evaluate import DigitsInpainting
from condgen.evaluate.digits import digits_prior

SECTION = "Particle Gibbs on digits"
TARGET_RHAT, TARGET_ANCESTORS = 1.05, 10.0


def make_model(prior, pixels: torch.Tensor, scale: float):
    r"""The Pyro model: s ~ HalfNormal(scale), x ~ prior, y ~ Normal(x[pixels], s)."""

    def model() -> None:
        s = pyro.sample("s", dist.HalfNormal(scale))
        x = pyro.sample("x", prior)
        loc = x.index_select(-1, pixels)
        pyro.sample("y", dist.Normal(loc, s.unsqueeze(-1)).to_event(1))

    return model


def pixel_diagnostics(x: torch.Tensor) -> tuple[float, float]:
    r"""The worst rank-normalised split R-hat and the lowest bulk ESS over the pixels of draws
    shaped ``[chains, draws, 64]`` (constant pixels skipped)."""
    draws = x.double().numpy()
    rhat, ess = [], []
    for k in range(draws.shape[-1]):
        column = draws[..., k]
        if np.ptp(column) == 0:
            continue
        rhat.append(float(az.rhat(column)))
        ess.append(float(az.ess(column, method="bulk")))
    return max(rhat), min(ess)


def run(task, model, label: str, args, particles: int, threshold: float) -> dict:
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        post = cg.condition(
            model, task.data, method="gibbs", num_chains=args.chains, num_samples=args.samples,
            warmup_steps=args.warmup, num_particles=particles, steps=args.steps,
            ess_threshold=threshold, seed=args.seed, progress=False,
        )  # fmt: skip
    seconds = time.perf_counter() - start
    s = post.samples["s"].double()
    x = post.samples["x"]
    rhat_x, ess_x = pixel_diagnostics(x)
    hidden = ~task.observed
    error = x.flatten(0, 1).mean(0) - task.true_image
    messages = [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]
    row = {
        "label": label,
        "particles": particles,
        "threshold": threshold,
        "s_mean": float(s.mean()),
        "s_sd": float(s.std()),
        "rhat_s": float(az.rhat(s.numpy())),
        "rhat_x": rhat_x,
        "ess_x": ess_x,
        "rmse_hidden": float(error[hidden].pow(2).mean().sqrt()),
        "ancestors": float(post.stats["ancestors"]),
        "update": float(post.stats["path_update_rate"]),
        "sweep_ess": float(post.stats["ess"]),
        "stats_rhat": float(post.stats["rhat"]),
        "stats_ess": float(post.stats["ess_bulk"]),
        "messages": messages,
        "time": seconds,
    }
    row["reached"] = row["rhat_x"] < TARGET_RHAT and row["ancestors"] >= TARGET_ANCESTORS
    return row


def measure(args, particles: int, threshold: float) -> dict:
    r"""One setting, from the cached prior (in a worker process of ``--jobs``)."""
    torch.set_num_threads(1)
    prior = digits_prior(progress=False)
    task = DigitsInpainting(mask=args.mask, noise=args.noise, index=args.index, prior=prior)
    model = make_model(prior, task.pixels, args.prior_scale)
    label = f"{particles} particles, ESS threshold {threshold}"
    row = run(task, model, label, args, particles, threshold)
    shown = {k: v for k, v in row.items() if k != "messages"}
    print(shown, *row["messages"], sep="\n  ", flush=True)
    return row


def settings(particles: list[int], thresholds: list[float]) -> list[tuple[int, float]]:
    r"""Each number of particles at the first threshold, then the first number of particles at
    the other thresholds."""
    first = [(p, thresholds[0]) for p in particles]
    return first + [(particles[0], e) for e in thresholds[1:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--particles", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--ess-thresholds", type=float, nargs="+", default=[0.5, 0.2])
    parser.add_argument("--steps", type=int, default=50, help="steps of each sweep")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up iterations per chain")
    parser.add_argument("--samples", type=int, default=1000, help="draws, all chains together")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--mask", default="center", choices=["center", "half"])
    parser.add_argument("--index", type=int, default=0, help="the test digit")
    parser.add_argument("--noise", type=float, default=0.15, help="the true noise scale")
    parser.add_argument("--prior-scale", type=float, default=0.5, help="s ~ HalfNormal(this)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="settings run at once (processes)")
    small = {"particles": [16], "ess_thresholds": [0.5], "steps": 10, "warmup": 10, "samples": 40}
    args = arguments(parser, None, lambda _: small, quick_help=None)
    torch.set_num_threads(1)
    start = time.perf_counter()
    prior = digits_prior(train=True, progress=False)  # trains and caches it on the first run
    prepared = time.perf_counter() - start
    task = DigitsInpainting(mask=args.mask, noise=args.noise, index=args.index, prior=prior)
    grid = settings(args.particles, args.ess_thresholds)
    if args.jobs > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            rows = list(pool.map(measure, [args] * len(grid), *zip(*grid, strict=True)))
    else:
        rows = [measure(args, p, e) for p, e in grid]
    draws = -(-args.samples // args.chains)
    lines = [
        f"## {SECTION}",
        "",
        f"Run with `{reproduce('gibbs_digits.py', args.argv)}`: {machine()}.",
        "",
        f"Inpainting test digit {args.index} (`DigitsInpainting(mask={args.mask!r})`, "
        f"{len(task.pixels)} of 64 pixels observed) with an unknown noise scale: "
        f"x ~ the cached digits diffusion prior (64 pixels), s ~ HalfNormal({args.prior_scale}), "
        f"y ~ N(A x, s² I), y drawn at s = {args.noise}. `method='gibbs'`, {args.chains} "
        f"chains of {args.warmup} warm-up iterations and {draws} draws, sweeps of {args.steps} "
        "steps (conditional SMC with ancestor sampling for x, one NUTS transition for s per "
        "sweep), other options at their defaults. R-hat x and ESS x: the worst rank-normalised "
        "split R-hat and the lowest bulk ESS over the 64 pixels across the chains (ArviZ); "
        "ancestors: the mean number of distinct first-time particles a sweep's final particles "
        "descend from; moved: `path_update_rate`, the fraction of sweeps whose new x is not the "
        "old one; RMSE: of the posterior mean at the hidden pixels against the true digit. "
        f"Targets: R-hat x < {TARGET_RHAT} and at least {TARGET_ANCESTORS:.0f} ancestors. "
        f"{prepared:.0f} s to load (or train) the prior. Timings on a shared machine are "
        "indicative only"
        + (
            f"; the {len(rows)} settings ran at once, in {args.jobs} processes."
            if args.jobs > 1 and len(rows) > 1
            else "."
        ),
        "",
        f"| particles | ESS threshold | s (truth {args.noise:.2f}) | R-hat s | R-hat x | ESS x "
        "| ancestors | moved | RMSE hidden | warned | time (s) | targets |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['particles']} | {r['threshold']} | {r['s_mean']:.3f} ± {r['s_sd']:.3f} "
            f"| {r['rhat_s']:.3f} | {r['rhat_x']:.2f} | {r['ess_x']:.0f} | {r['ancestors']:.1f} "
            f"| {r['update']:.2f} | {r['rmse_hidden']:.3f} | {len(r['messages'])} "
            f"| {r['time']:.0f} | {'met' if r['reached'] else 'missed'} |"
        )
    lines += ["", "Warnings raised (`ConvergenceWarning`):", ""]
    for r in rows:
        shown = "; ".join(f"“{m}”" for m in r["messages"]) or "none"
        lines.append(f"- {r['label']}: {shown}")
    publish("\n".join(lines), args)


if __name__ == "__main__":
    main()
