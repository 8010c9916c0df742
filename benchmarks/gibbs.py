r"""A neural prior beside a classical unknown: ``method="gibbs"`` against NUTS on the exact
mixture density and the exact joint posterior of :class:`condgen.evaluate.UnknownNoiseMixture`
(a 3-component mixture prior in 2-D, an unknown noise scale, 5 iid observations), then Gibbs on a
flow-matching prior trained on draws of that mixture.

Run from the repository root::

    python benchmarks/gibbs.py            # about 5 minutes on 2 CPU cores
    python benchmarks/gibbs.py --quick    # smoke run, printed only

The Markdown report is printed and written to ``docs/benchmarks.md`` (section "Neural prior
beside a noise scale").
"""

from __future__ import annotations

import argparse
import time

import torch
from common import arguments, machine, publish, quiet_condition

import condgen as cg
from condgen.evaluate import UnknownNoiseMixture, sliced_wasserstein
from condgen.priors import FlowMatchingPrior
from condgen.priors.nets import MLP

SECTION = "Neural prior beside a noise scale"


def score(task: UnknownNoiseMixture, post: cg.Posterior, seconds: float, seed: int) -> dict:
    r"""Errors of the noise scale's mean (in posterior sds) and sd (relative), the neural site's
    SW to exact draws beside the two-sample floor, R-hat and ESS of s, and the time."""
    mean, sd = task.noise_moments()
    s = post.samples["s"].double().flatten()
    x = post.flatten()["x"]
    exact = task.reference_samples(len(x), seed=100 + seed)["x"]
    floor = task.reference_samples(len(x), seed=200 + seed)["x"]
    summary = post.summary()
    return {
        "s_mean_err": abs(float(s.mean()) - mean) / sd,
        "s_sd_err": abs(float(s.std()) / sd - 1),
        "sw": float(sliced_wasserstein(x, exact, 1024)),
        "floor": float(sliced_wasserstein(floor, exact, 1024)),
        "r_hat": float(summary.loc["s", "r_hat"]),
        "ess": float(summary.loc["s", "ess_bulk"]),
        "time": seconds,
    }


def run(task, method: str, num_samples: int, seed: int, **options) -> dict:
    post, seconds = quiet_condition(
        task.model, task.data, method, num_samples=num_samples, seed=seed, **options
    )
    return score(task, post, seconds, seed)


def trained_task(task: UnknownNoiseMixture, steps: int) -> tuple[UnknownNoiseMixture, float]:
    r"""The same model with a flow-matching prior trained on 20,000 draws of the mixture."""
    torch.manual_seed(0)
    prior = FlowMatchingPrior(MLP(2, hidden=(128, 128, 128)), event_shape=(2,))
    start = time.perf_counter()
    prior.fit(task.prior.sample((20_000,)), steps=steps, progress=False)
    trained = UnknownNoiseMixture(task.weights, task.means, task.variances, task.y)
    trained.prior = prior
    return trained, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--train-steps", type=int, default=3000)
    sizes = {"seeds": 1, "samples": 200, "train_steps": 200}
    args = arguments(parser, None, lambda _: sizes, quick_help=None)
    torch.set_num_threads(1)
    task = UnknownNoiseMixture.default()
    small = {"warmup_steps": 50} if args.quick else {}
    rows = []
    for seed in range(args.seeds):
        rows.append(("gibbs (defaults)", seed, run(task, "gibbs", args.samples, seed, **small)))
        rows.append(("nuts (exact mixture density)", seed, run(task, "nuts", args.samples, seed)))
        print(rows[-2], rows[-1], flush=True)
    trained, train_time = trained_task(task, args.train_steps)
    result = run(trained, "gibbs", args.samples, 0, **small)
    rows.append((f"gibbs, trained flow-matching prior ({args.train_steps} steps)", 0, result))
    print(rows[-1], flush=True)
    lines = [
        f"## {SECTION}",
        "",
        f"Run with `python benchmarks/gibbs.py`: {machine()}.",
        "",
        "`condgen.evaluate.UnknownNoiseMixture.default()`: s ~ HalfNormal(1), x ~ a 3-component "
        "Gaussian mixture in 2-D (`GaussianMixturePrior`, a path prior with the exact denoiser), "
        "y_i ~ N(x, s² I) for 5 iid observations. The exact posterior of s is a grid "
        "quadrature, x | s, y a mixture in closed form. `gibbs` runs its defaults (4 chains, "
        "200 warm-up iterations, conditional SMC sweeps of 64 particles and 50 steps, one NUTS "
        "transition for s per sweep); `nuts` runs on the exact mixture density (4 chains, 500 "
        f"warm-up steps). {args.samples} draws each. Errors: the mean of s in posterior sds, "
        "its sd relatively; SW of the x draws to as many exact draws, beside the two-sample "
        "floor. Acceptance: mean within 0.25 sd, sd within 20%, SW within 0.25 of the floor, "
        "in under 10 minutes. The last row conditions the same model on a flow-matching prior "
        f"trained on 20,000 draws of the mixture ({train_time:.0f} s of training), against the "
        "exact posterior of the mixture (so it includes the prior's fitting error).",
        "",
        "| method | seed | s mean err (sd) | s sd err | SW x | SW floor | R-hat s | ESS s "
        "| time (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, seed, r in rows:
        lines.append(
            f"| {label} | {seed} | {r['s_mean_err']:.3f} | {r['s_sd_err']:.1%} | {r['sw']:.3f} "
            f"| {r['floor']:.3f} | {r['r_hat']:.3f} | {r['ess']:.0f} | {r['time']:.0f} |"
        )
    publish("\n".join(lines), args)


if __name__ == "__main__":
    main()
