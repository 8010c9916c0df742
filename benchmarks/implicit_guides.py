r"""Semi-implicit guide: condgen's :class:`~condgen.guides.SemiImplicitGuide` (trained with its
default objective, :class:`~condgen.infer.SIVI_ELBO`) against ``AutoNormal``,
``AutoMultivariateNormal`` and condgen's :class:`~condgen.guides.FlowGuide` (NSF) on the 2-D
toy posteriors of ``condgen.evaluate`` (``TwoModes``, ``TargetDensity``), with their exact
samplers:

* **two-mode**: :math:`\theta \sim \mathcal{N}(0, 9 I_2)`, :math:`y \sim
  \mathcal{N}((\theta_1^2, \theta_2), 0.5^2 I)` at :math:`y = (4, 0)`, modes at
  :math:`\theta_1 = \pm 2`;
* **banana** and **X-shaped**: the prior :math:`\mathcal{N}(0, 9 I_2)` times a banana or an
  equal mixture of two Gaussians of correlations :math:`\pm 0.9`.

Every guide gets ``condgen.condition``'s SVI: ClippedAdam, lr 0.02 decaying to 5% over the
steps, and the objective the SVI method picks for it (``Trace_ELBO`` with 4 vectorised
particles; ``SIVI_ELBO`` with 16 particles and 50 inner draws for the semi-implicit guide).
Reported, as the mean over seeds: the time of one step, the sliced Wasserstein distance (SW2,
256 directions) between 2000 guide draws and 2000 exact draws at checkpoints with the seconds
spent to reach them (accuracy per wall-second), and on the two-mode posterior the mass at
:math:`\theta_1 > 0`.

Run from the repository root::

    python benchmarks/implicit_guides.py            # 2000 steps, 3 seeds: ~5 minutes
    python benchmarks/implicit_guides.py --quick    # a smoke run, printed only

The Markdown report is printed and written to ``docs/benchmarks.md`` (section "Implicit
guides"; other sections are kept).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import pyro
import torch
from common import arguments, begin, heading, machine, publish, reproduce
from guides import show, timed_svi
from pyro.infer import SVI
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

import condgen as cg
from condgen.evaluate import TargetDensity, TwoModes, sliced_wasserstein
from condgen.guides import FlowGuide, SemiImplicitGuide

SECTION = "Implicit guides"
NUM_DRAWS = 2000


def tasks() -> dict[str, tuple[Callable, dict, Callable[[int, int], torch.Tensor]]]:
    r"""Model, data and exact sampler (of a size and a seed) by task name."""
    found = {
        "two-mode": TwoModes(),
        "banana": TargetDensity.banana(),
        "x-shaped": TargetDensity.x_shaped(),
    }

    def sampler(task):
        return lambda n, seed: task.reference_samples(n, seed)["theta"]

    return {name: (task.model, task.data, sampler(task)) for name, task in found.items()}


GUIDES: dict[str, Callable] = {
    "SemiImplicitGuide (SIVI_ELBO)": SemiImplicitGuide,
    "FlowGuide (nsf)": FlowGuide,
    "AutoMultivariateNormal": AutoMultivariateNormal,
    "AutoNormal": AutoNormal,
}


def run(task: str, label: str, steps: int, checkpoints: list[int], seed: int) -> dict:
    r"""Fits one guide with condgen's SVI settings, timing its steps, and scores it at the
    checkpoints."""
    model, data, exact = tasks()[task]
    problem = cg.Problem(model, data)
    reference = exact(NUM_DRAWS, seed + 1000)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    method = cg.methods.SVI(num_steps=steps)
    guide = GUIDES[label](problem.conditioned_model)
    optim = pyro.optim.ClippedAdam({"lr": method.lr, "lrd": method.lr_decay ** (1 / steps)})
    svi = SVI(problem.conditioned_model, guide, optim, method.objective(guide, problem))

    def score() -> tuple[float, float]:
        theta = problem.sample_guide(guide, NUM_DRAWS)[0]["theta"]
        distance = float(sliced_wasserstein(theta, reference, num_projections=256))
        return distance, float((theta[:, 0] > 0).float().mean())

    step_ms, record = timed_svi(svi, steps, checkpoints, score)
    return {"task": task, "guide": label, "step_ms": step_ms, "record": record}


def table(results: list[dict], seeds: int) -> str:
    r"""One Markdown table per task, means over seeds."""
    checkpoints = [r[0] for r in results[0]["record"]]
    head = " | ".join(f"SW @ {c} steps (s)" for c in checkpoints)
    lines = []
    for task in tasks():
        rows = [r for r in results if r["task"] == task]
        if not rows:
            continue
        mass = " mass θ₁ > 0 (per seed) |" if task == "two-mode" else ""
        lines += [f"**{task}**", "", f"| guide | ms / step | {head} |{mass}"]
        lines.append("|---|---|" + "---|" * (len(checkpoints) + bool(mass)))
        for label in GUIDES:
            runs = [r for r in rows if r["guide"] == label]
            if not runs:
                continue
            cells = []
            for i in range(len(checkpoints)):
                seconds = statistics.mean(r["record"][i][1] for r in runs)
                distance = statistics.mean(r["record"][i][2] for r in runs)
                cells.append(f"{distance:.3f} ({seconds:.1f})")
            step = statistics.mean(r["step_ms"] for r in runs)
            line = f"| {label} | {step:.2f} | {' | '.join(cells)} |"
            if mass:
                line += " " + ", ".join(f"{r['record'][-1][3]:.2f}" for r in runs) + " |"
            lines.append(line)
        lines.append("")
    return "\n".join(lines) + f"\n(means over {seeds} seeds)"


def report(results: list[dict], args: argparse.Namespace, floors: dict[str, float]) -> str:
    floor = ", ".join(f"{k}: {v:.3f}" for k, v in floors.items())
    machine_line = machine([f"Pyro {pyro.__version__}"])
    return "\n".join(
        [
            *heading(SECTION, machine_line, reproduce("implicit_guides.py", args.argv)),
            "`SemiImplicitGuide` (32 mixing components, `SIVI_ELBO` with 16 particles and 50 "
            "inner draws) against `FlowGuide` (NSF), `AutoMultivariateNormal` and `AutoNormal` "
            "(`Trace_ELBO`, 4 vectorised particles), all with `condgen.condition`'s SVI "
            f"(ClippedAdam, lr 0.02 decaying to 5% over {args.steps} steps), seeds 0 to "
            f"{args.seeds - 1}. Targets and exact samplers: `condgen.evaluate.TwoModes` and "
            "`TargetDensity` "
            "(see the script's docstring). ms / step is the median over blocks of 50 steps; SW "
            f"is the sliced 2-Wasserstein distance (256 directions) between {NUM_DRAWS} guide "
            f"draws and {NUM_DRAWS} exact draws, with the seconds of SVI spent to reach the "
            f"checkpoint in brackets. Floor (two sets of exact draws): {floor}.",
            "",
            table(results, args.seeds),
        ]
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="SVI steps per guide")
    parser.add_argument("--seeds", type=int, default=3)
    small = {"steps": 200, "seeds": 1}
    return arguments(parser, argv, lambda _: small, quick_help="smoke run (printed only)")


def main(argv: list[str] | None = None) -> str:
    args = parse(argv)
    begin(args)
    checkpoints = sorted({args.steps // 4 - args.steps // 4 % 50 or 50, args.steps})
    results, floors = [], {}
    for task, (_, _, exact) in tasks().items():
        other = exact(NUM_DRAWS, 2000)
        floors[task] = float(sliced_wasserstein(exact(NUM_DRAWS, 1000), other, 256))
        for label in GUIDES:
            for seed in range(args.seeds):
                results.append(run(task, label, args.steps, checkpoints, seed))
                show(f"{task:10s} {label:30s} seed {seed}", results[-1])
    return publish(report(results, args, floors), args)


if __name__ == "__main__":
    main()
