r"""Flow-matching and score-based posterior estimation: condgen's FMPE and NPSE against sbi's,
on the same simulations, scored by C2ST against exact posteriors.

For each task, budget :math:`N \in \{10^3, 10^4\}` and seed, :math:`N` simulations
:math:`(\theta_i, x_i)` are drawn once from condgen's model of the task and given to every
estimator:

* two moons (:class:`condgen.evaluate.TwoMoons`, uniform prior on :math:`[-1, 1]^2`) and the
  Gaussian linear task (:class:`condgen.evaluate.GaussianLinear`, :math:`d = 10`, prior
  :math:`\mathcal{N}(0, 0.1^2 I)`, noise 0.1), both from the SBI benchmark;
* condgen: ``condgen.infer.FMPE(task.model, observed=["x"])`` and ``NPSE(...)`` with their
  defaults, ``fit(simulations=...)``;
* sbi: ``sbi.inference.FMPE(prior=...)`` and ``NPSE(prior=...)`` with their defaults,
  ``append_simulations(theta, x).train()``, then ``build_posterior()`` and its default
  sampler.

Each estimator is conditioned on a few observations (two moons: :math:`x_o = (0, 0)` and
simulated ones; Gaussian linear: ``GaussianLinear(seed=k)``), and its draws are scored by
:func:`condgen.evaluate.c2st` against as many exact posterior draws, the same for every
estimator. Training time is the wall time of the training call alone; sampling time that of
drawing from one observation; one torch thread.

Run from the repository root::

    pip install sbi                       # the peer (the ``bench`` extra)
    python benchmarks/implicit.py         # 2 tasks x 2 budgets x 4 estimators: ~30 minutes
    python benchmarks/implicit.py --quick # smoke run (printed only), a few minutes

The Markdown report is printed and written to ``docs/benchmarks.md`` (section "Flow-matching
and score-based posterior estimation"; other sections are kept).

References:
    | Flow Matching for Scalable Simulation-Based Inference (Dax et al., 2023)
    | https://arxiv.org/abs/2305.17161

    | Sequential Neural Score Estimation (Sharrock et al., 2022)
    | https://arxiv.org/abs/2210.04872

    | Benchmarking Simulation-Based Inference (Lueckmann et al., 2021)
    | https://arxiv.org/abs/2101.04653
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from common import arguments, benchmark, heading, reproduce
from npe import _machine, _mean, _spread, sbi_trained
from torch import Tensor

from condgen.evaluate import GaussianLinear, TwoMoons, c2st
from condgen.infer import FMPE, NPSE

SECTION = "Flow-matching and score-based posterior estimation"
KINDS = ("fmpe", "npse")
ESTIMATORS = tuple(f"{owner}-{kind}" for kind in KINDS for owner in ("condgen", "sbi"))


def tasks(name: str, count: int) -> list[TwoMoons | GaussianLinear]:
    r"""The observations of a task: for two moons :math:`(0, 0)` and ``count - 1`` simulated
    ones, for the Gaussian linear task ``count`` simulated ones."""
    if name == "two-moons":
        return [TwoMoons()] + [TwoMoons(seed=k, observation="simulated") for k in range(1, count)]
    return [GaussianLinear(seed=k) for k in range(count)]


def reference(task: TwoMoons | GaussianLinear, num_samples: int, seed: int) -> Tensor:
    r"""Exact posterior draws of a task's observation."""
    if isinstance(task, TwoMoons):
        return task.reference_samples(num_samples, seed=seed)["theta"]
    generator = torch.Generator().manual_seed(seed)
    posterior = task.posterior()["theta"].base_dist
    noise = torch.randn(num_samples, task.dim, generator=generator)
    return posterior.loc + posterior.scale * noise


def sbi_prior(task: TwoMoons | GaussianLinear) -> torch.distributions.Distribution:
    r"""The task's prior as sbi takes it."""
    from sbi.utils import BoxUniform

    if isinstance(task, TwoMoons):
        return BoxUniform(-torch.ones(2), torch.ones(2))
    scale = torch.full((task.dim,), task.prior_scale)
    return torch.distributions.Independent(torch.distributions.Normal(0 * scale, scale), 1)


def train_condgen(kind: str, task, simulations: dict[str, Tensor], seed: int):
    r"""condgen's FMPE or NPSE with its defaults: a sampler ``(x, n) -> draws``, the training
    time and the number of epochs."""
    torch.manual_seed(seed)
    estimator = {"fmpe": FMPE, "npse": NPSE}[kind](task.model, observed=["x"])
    start = time.perf_counter()
    estimator.fit(simulations=simulations, seed=seed, progress=False)
    elapsed = time.perf_counter() - start

    def sample(x: Tensor, n: int) -> Tensor:
        return estimator.sample({"x": x}, n)["theta"]

    return sample, elapsed, len(estimator.training_losses)


def train_sbi(kind: str, task, simulations: dict[str, Tensor], seed: int):
    r"""sbi's FMPE or NPSE with its defaults."""
    from sbi.inference import FMPE as SbiFMPE
    from sbi.inference import NPSE as SbiNPSE

    torch.manual_seed(seed)
    cls = {"fmpe": SbiFMPE, "npse": SbiNPSE}[kind]
    inference = cls(prior=sbi_prior(task), show_progress_bars=False)
    return sbi_trained(inference, simulations)


def run(names: list[str], budgets: list[int], seeds: int, draws: int, count: int) -> list[dict]:
    r"""Trains every estimator for every task, budget and seed and scores it on every
    observation.

    Returns:
        One record per (task, estimator, budget, seed): ``c2st`` (a list over observations),
        ``time_s`` (training), ``sample_s`` (mean over observations) and ``epochs``.
    """
    trainers: dict[str, Callable] = {}
    for kind in KINDS:
        trainers[f"condgen-{kind}"] = lambda *a, kind=kind: train_condgen(kind, *a)
        trainers[f"sbi-{kind}"] = lambda *a, kind=kind: train_sbi(kind, *a)
    records = []
    for name in names:
        observations = tasks(name, count)
        references = [reference(t, draws, 10_000 + i) for i, t in enumerate(observations)]
        for budget in budgets:
            for seed in range(seeds):
                simulations = FMPE(observations[0].model, observed=["x"]).simulate(
                    budget, seed=seed
                )
                for estimator, train in trainers.items():
                    sample, elapsed, epochs = train(observations[0], simulations, seed)
                    scores, times = [], []
                    for i, (task, exact) in enumerate(zip(observations, references, strict=True)):
                        torch.manual_seed(seed * 1000 + i)
                        start = time.perf_counter()
                        with torch.no_grad():
                            drawn = sample(task.data["x"], draws)
                        times.append(time.perf_counter() - start)
                        scores.append(float(c2st(drawn, exact, seed=i)))
                    record = {
                        "task": name,
                        "estimator": estimator,
                        "budget": budget,
                        "seed": seed,
                        "c2st": scores,
                        "time_s": elapsed,
                        "sample_s": statistics.mean(times),
                        "epochs": epochs,
                    }
                    records.append(record)
                    print(
                        f"{name} N={budget} seed={seed} {estimator}: C2ST "
                        f"{statistics.mean(scores):.3f} ({', '.join(f'{s:.2f}' for s in scores)})"
                        f", training {elapsed:.1f} s, {epochs} epochs, sampling "
                        f"{record['sample_s']:.2f} s",
                        flush=True,
                    )
    return records


def results_table(records: list[dict]) -> str:
    r"""One row per task, budget and estimator: mean C2ST over observations (mean ± sd over
    seeds), training and sampling times, and, on sbi's rows, the ratios of condgen's
    estimator of the same kind to sbi's."""
    lines = [
        "| task | simulations | estimator | C2ST | C2ST ratio condgen / sbi | training (s) "
        "| training ratio | sampling (s) | sampling ratio | epochs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["task"] for r in records):
        for budget in sorted({r["budget"] for r in records if r["task"] == name}):
            rows = {
                e: [r for r in records if (r["task"], r["budget"], r["estimator"]) ==
                    (name, budget, e)]
                for e in ESTIMATORS
            }  # fmt: skip
            for estimator, chosen in rows.items():
                if not chosen:
                    continue
                ratios = ["", "", ""]
                ours = rows.get(estimator.replace("sbi-", "condgen-"), [])
                if estimator.startswith("sbi-") and ours:
                    ratios = [
                        f"{_mean(ours, key) / _mean(chosen, key):.2f}"
                        for key in ("c2st", "time_s", "sample_s")
                    ]
                lines.append(
                    f"| {name} | {budget:,} | {estimator} | {_spread(chosen)} | {ratios[0]} "
                    f"| {_mean(chosen, 'time_s'):.1f} | {ratios[1]} "
                    f"| {_mean(chosen, 'sample_s'):.2f} | {ratios[2]} "
                    f"| {statistics.mean(r['epochs'] for r in chosen):.0f} |"
                )
    return "\n".join(lines)


PROTOCOL = """\
For each task, budget N and seed, N simulations (θ, x) are drawn once from condgen's model of
the task and given to every estimator. Tasks, from the SBI benchmark (Lueckmann et al., 2021):
two moons (`condgen.evaluate.TwoMoons`, θ uniform on [-1, 1]²) and Gaussian linear
(`condgen.evaluate.GaussianLinear`, d = 10, θ ~ N(0, 0.1² I), x ~ N(θ, 0.1² I)).

* condgen-fmpe, condgen-npse: `condgen.infer.FMPE(task.model, observed=["x"])` and
  `condgen.infer.NPSE(...)` with their defaults, trained by `fit(simulations=...)`;
* sbi-fmpe, sbi-npse: `sbi.inference.FMPE(prior=...)` and `sbi.inference.NPSE(prior=...)`
  with their defaults, trained by `append_simulations(theta, x).train()`; draws from
  `build_posterior()` with its default sampler.

Each estimator is conditioned on <observations> observations (two moons: x_o = (0, 0) and
simulated ones, `TwoMoons(seed=k, observation="simulated")`; Gaussian linear:
`GaussianLinear(seed=k)`), and its draws are compared with as many exact posterior draws (the
same for every estimator) by `condgen.evaluate.c2st`, the benchmark's classifier two-sample
test. Training time is the wall time of the training call alone (the simulations are shared
and not timed), sampling time the wall time of drawing from one observation (mean over
observations); one torch thread.
"""


def report(records: list[dict], args: argparse.Namespace, machine_line: str) -> str:
    r"""The Markdown section: machine, date, command, protocol and table."""
    command = reproduce("implicit.py", args.argv)
    return "\n".join(
        [
            *heading(SECTION, machine_line, "pip install sbi", command),
            PROTOCOL.replace("<observations>", str(args.observations)).rstrip(),
            "",
            f"Here: {args.seeds} seed(s) per budget, {args.draws} draws per estimator and as "
            f"many exact draws per observation, {args.observations} observations per task: a "
            "small run (the C2ST of one training varies by a few hundredths between seeds), "
            "sized to the time this benchmark had.",
            "",
            "C2ST: 0.5 is indistinguishable from the exact posterior, 1 fully distinct. A ratio "
            "(on sbi's rows: condgen's estimator of the same kind over sbi's) below 1 means "
            "condgen's posterior is closer, or its training or sampling faster.",
            "",
            results_table(records),
            "",
        ]
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    r"""Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--tasks", nargs="+", default=["two-moons", "gaussian-linear"], help="task names"
    )
    parser.add_argument("--budgets", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--seeds", type=int, default=1, help="trainings per budget")
    parser.add_argument("--draws", type=int, default=1_000, help="draws per C2ST side")
    parser.add_argument("--observations", type=int, default=3, help="per task")
    small = {"budgets": [1_000], "seeds": 1, "draws": 500, "observations": 2}
    return arguments(parser, argv, lambda _: small, threads=1)


def main(argv: list[str] | None = None) -> str:
    r"""Runs the benchmark, prints the report and writes it (unless ``--quick`` without
    ``--output``, or ``--no-write``)."""
    warnings.filterwarnings("ignore", category=UserWarning)
    return benchmark(
        parse(argv),
        lambda args: run(args.tasks, args.budgets, args.seeds, args.draws, args.observations),
        report,
        _machine,
    )


if __name__ == "__main__":
    main()
