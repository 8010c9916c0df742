r"""Flow guides: condgen's :class:`~condgen.guides.FlowGuide` (zuko flows) against Pyro's
``AutoIAFNormal`` and ``AutoNormalizingFlow``, and ``AutoNormal`` as the Gaussian baseline.

Two posteriors with exact samplers:

* **banana** (2-D): :math:`z \sim \mathcal{N}(0, I_2)`, :math:`y \sim \mathcal{N}(z_2 - z_1^2,
  0.3^2)`, :math:`y = 1`;
* **bananas** (16-D): eight independent such pairs, :math:`y_k \sim \mathcal{N}(z_{2k+1} -
  z_{2k}^2, 0.3^2)`, with :math:`y_k` spread over :math:`[-0.5, 1.5]`; the posterior is a
  product of eight bananas, each drawn exactly (inverse CDF of :math:`z_{2k} \mid y_k` on a
  fine grid, then :math:`z_{2k+1}` given it, Gaussian).

Every guide gets the same SVI: ``Trace_ELBO`` with 4 vectorised particles, ClippedAdam (lr
0.01 decaying to 0.001), the same steps. Reported: the time of one SVI step (the median over
blocks of steps, one thread) and its ratio to the Pyro peer (FlowGuide NSF / Pyro spline IAF,
FlowGuide MAF / AutoIAFNormal, both 3 transforms and hidden layers (64, 64)), and the sliced
Wasserstein distance (SW2, 256 directions) between 2000 guide draws and 2000 exact draws at
checkpoints, with the wall time spent to reach them: accuracy per wall-second.

Run from the repository root::

    python benchmarks/guides.py              # 3000 steps on both posteriors: ~10 minutes
    python benchmarks/guides.py --quick      # a smoke run, printed only

The Markdown report is printed and written to ``docs/benchmarks.md`` (section "Guides"; other
sections are kept).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import pyro
import torch
from common import arguments, begin, heading, machine, publish, reproduce
from pyro.distributions.transforms import iterated, spline_autoregressive
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoIAFNormal, AutoNormal, AutoNormalizingFlow
from torch import Tensor

import condgen as cg
from condgen.evaluate import Banana, sliced_wasserstein
from condgen.guides import FlowGuide

SECTION = "Guides"
NOISE = 0.3
NUM_DRAWS = 2000
HIDDEN = (64, 64)
TRANSFORMS = 3


# -------------------------------------------------------------------------------- tasks


def bananas_exact(y: Tensor, n: int, seed: int) -> Tensor:
    r"""Exact posterior draws of the bananas, pair by pair (:class:`condgen.evaluate.Banana`)."""
    return Banana(y, NOISE).reference_samples(n, seed)["z"]


TASKS = {
    "banana (2-D)": torch.tensor([1.0]),
    "bananas (16-D)": torch.linspace(-0.5, 1.5, 8),
}


# ------------------------------------------------------------------------------- guides


def guides() -> dict[str, tuple[Callable, str | None]]:
    r"""Guide factories by label, with the label of their Pyro peer."""
    spline = functools.partial(
        iterated, TRANSFORMS, spline_autoregressive, hidden_dims=list(HIDDEN)
    )
    options = {"transforms": TRANSFORMS, "hidden_features": HIDDEN}
    return {
        "FlowGuide nsf": (lambda m: FlowGuide(m, "nsf", **options), "Pyro spline IAF"),
        "FlowGuide nsf, init_scale=1": (
            lambda m: FlowGuide(m, "nsf", init_scale=1.0, **options),
            "Pyro spline IAF",
        ),
        "FlowGuide maf": (lambda m: FlowGuide(m, "maf", **options), "AutoIAFNormal"),
        "Pyro spline IAF": (lambda m: AutoNormalizingFlow(m, spline), None),
        "AutoIAFNormal": (
            lambda m: AutoIAFNormal(m, hidden_dim=list(HIDDEN), num_transforms=TRANSFORMS),
            None,
        ),
        "AutoNormal": (lambda m: AutoNormal(m), None),
    }


def run(
    task: str, label: str, factory: Callable, steps: int, checkpoints: list[int], seed: int
) -> dict:
    r"""Fits one guide, timing its steps, and scores it at the checkpoints."""
    y = TASKS[task]
    problem = cg.Problem(Banana(y, NOISE).model, {"y": y})
    reference = bananas_exact(y, NUM_DRAWS, seed=seed + 1000)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = factory(problem.conditioned_model)
    loss = Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=0)
    optim = pyro.optim.ClippedAdam({"lr": 0.01, "lrd": 0.1 ** (1 / steps)})
    svi = SVI(problem.conditioned_model, guide, optim, loss)

    def score() -> tuple[float]:
        values, _ = problem.sample_guide(guide, NUM_DRAWS)
        return (float(sliced_wasserstein(values["z"], reference, num_projections=256)),)

    step_ms, record = timed_svi(svi, steps, checkpoints, score)
    return {"task": task, "guide": label, "step_ms": step_ms, "record": record}


def timed_svi(
    svi: SVI, steps: int, checkpoints: list[int], score: Callable[[], tuple]
) -> tuple[float, list[tuple]]:
    r"""Runs ``svi`` for ``steps`` steps after one that builds the guide, timed in blocks of 50;
    after the blocks that end at a checkpoint or the last step, records ``(step, seconds of SVI
    so far, *score())`` (``score`` runs without gradients). Returns the median milliseconds per
    step and the record."""
    svi.step()  # builds the guide
    times, elapsed, record, done = [], 0.0, [], 0
    while done < steps:
        size = min(50, steps - done)
        start = time.perf_counter()
        for _ in range(size):
            svi.step()
        spent = time.perf_counter() - start
        elapsed, done = elapsed + spent, done + size
        times.append(spent / size)
        if done in checkpoints or done == steps:
            with torch.no_grad():
                record.append((done, elapsed, *score()))
    return 1e3 * statistics.median(times), record


# ------------------------------------------------------------------------------- report


def show(label: str, result: dict) -> None:
    r"""Prints ``label``, a run's median time per step and its last checkpoint's SW, as the run
    ends."""
    last = result["record"][-1]
    print(
        f"{label} {result['step_ms']:6.2f} ms/step  SW {last[2]:.3f} after {last[1]:.1f} s",
        flush=True,
    )


def table(results: list[dict], peers: dict[str, str | None]) -> str:
    r"""One Markdown table per task: step time, ratio to the Pyro peer, SW over time."""
    checkpoints = [c for c, _, _ in results[0]["record"]]
    head = " | ".join(f"SW @ {c} steps (s)" for c in checkpoints)
    lines = []
    for task in TASKS:
        rows = [r for r in results if r["task"] == task]
        if not rows:
            continue
        by_label = {r["guide"]: r for r in rows}
        lines += [
            f"**{task}**",
            "",
            f"| guide | ms / step | ratio to Pyro peer | {head} |",
            "|---|---|---|" + "---|" * len(checkpoints),
        ]
        for r in rows:
            peer = peers.get(r["guide"])
            ratio = (
                f"{r['step_ms'] / by_label[peer]['step_ms']:.2f} (vs {peer})"
                if peer in by_label
                else ""
            )
            cells = " | ".join(f"{d:.3f} ({t:.1f})" for _, t, d in r["record"])
            lines.append(f"| {r['guide']} | {r['step_ms']:.2f} | {ratio} | {cells} |")
        lines.append("")
    return "\n".join(lines)


def report(results: list[dict], args: argparse.Namespace, floors: dict[str, float]) -> str:
    peers = {k: v for k, (_, v) in guides().items()}
    floor = ", ".join(f"{k}: {v:.3f}" for k, v in floors.items())
    return "\n".join(
        [
            *heading(SECTION, _machine(), reproduce("guides.py", args.argv)),
            "`FlowGuide` (one zuko flow over the unconstrained latents, drawn in the "
            "inverse-autoregressive direction) against Pyro's `AutoNormalizingFlow` with "
            f"{TRANSFORMS} `spline_autoregressive` transforms, 8 bins (the peer of the NSF guide; "
            "Pyro's default linear-rational splines: `order='quadratic'` fails in "
            f"`spline_autoregressive` of Pyro {pyro.__version__}) and `AutoIAFNormal` with "
            f"{TRANSFORMS} affine transforms (the peer of the MAF guide), all with hidden layers "
            f"{HIDDEN}; `AutoNormal` is the Gaussian baseline. FlowGuide starts at "
            "N(initial point, 0.1² I) (its default `init_scale`, as Pyro's Gaussian "
            "autoguides), Pyro's flows at their random initialisation around N(0, I); the row "
            "`init_scale=1` shows FlowGuide started at unit scale. The posteriors are a banana "
            "(2-D) and eight independent bananas (16-D), "
            "both with exact samplers (see the script's docstring). Same SVI for all: "
            "`Trace_ELBO` with 4 vectorised particles, ClippedAdam, lr 0.01 decaying to 0.001 "
            f"over {args.steps} steps, seed {args.seed}. ms / step is the median over blocks of "
            "50 steps; the ratio is the FlowGuide's time over its Pyro peer's (below 1: "
            "faster). SW is the sliced 2-Wasserstein distance (256 directions) between "
            f"{NUM_DRAWS} guide draws and {NUM_DRAWS} exact draws, with the seconds of SVI "
            "spent to reach the checkpoint in brackets. Floor (two sets of exact draws): "
            f"{floor}.",
            "",
            table(results, peers),
        ]
    )


def _machine() -> str:
    import zuko

    return machine([f"Pyro {pyro.__version__}", f"zuko {zuko.__version__}"])


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000, help="SVI steps per guide")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    return arguments(parser, argv, lambda _: {"steps": 200}, quick_help="smoke run (printed only)")


def main(argv: list[str] | None = None) -> str:
    args = parse(argv)
    begin(args, _machine)
    checkpoints = sorted({max(args.steps // 12, 50), args.steps // 3, args.steps})
    checkpoints = [c - c % 50 or 50 for c in checkpoints]
    results, floors = [], {}
    for task in args.tasks:
        y = TASKS[task]
        floors[task] = float(
            sliced_wasserstein(
                bananas_exact(y, NUM_DRAWS, seed=args.seed + 1000),
                bananas_exact(y, NUM_DRAWS, seed=args.seed + 2000),
                num_projections=256,
            )
        )
        for label, (factory, _) in guides().items():
            results.append(run(task, label, factory, args.steps, checkpoints, args.seed))
            show(f"{task:16s} {label:16s}", results[-1])
    return publish(report(results, args, floors), args)


if __name__ == "__main__":
    main()
