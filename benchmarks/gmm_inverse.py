r"""The Gaussian-mixture inverse problem of Cardoso et al. (2023): condgen's posterior samplers
against the exact posterior, beside azula's DPS, PiGDM and TDS on the same exact denoiser.

The prior is a mixture of 25 unit-covariance Gaussians with means :math:`(8i, 8j, 8i, 8j,
\dots) \in \mathbb{R}^d`, :math:`i, j \in \{-2, \dots, 2\}`, and weights :math:`w_k \propto
\epsilon_k^2`, :math:`\epsilon_k \sim \mathcal{N}(0, 1)`. The observation is :math:`y = A x +
\sigma_y n` with a random :math:`A \in \mathbb{R}^{d_y \times d}` whose singular values are
replaced by sorted :math:`\mathcal{U}(0, 1)` draws, :math:`\sigma_y \sim \mathcal{U}(0, 1)
\cdot \max_i s_i`, and :math:`x` drawn from the prior; all of it is drawn anew for each seed.
This is the default of :class:`condgen.evaluate.GaussianMixtureInverseProblem`
(``get_task("gmm", dim=d, obs_dim=d_y, seed=seed)``), which the benchmark builds. The
posterior is again a Gaussian mixture, so every method is scored by the sliced Wasserstein
distance between its draws and as many exact posterior draws.

Run from the repository root::

    pip install --no-deps azula einops   # the peers (the ``bench`` extra)
    python benchmarks/gmm_inverse.py                 # d in {8, 80, 800}, 3 seeds: ~8 minutes
    python benchmarks/gmm_inverse.py --dims 8 80 --seeds 5 --particles 2000
    python benchmarks/gmm_inverse.py --quick         # smoke run (printed only), under a minute

The Markdown report is printed and written to ``docs/benchmarks.md`` (section "Gaussian-mixture
inverse problem"; other sections are kept).

References:
    | Monte Carlo guided Diffusion for Bayesian linear inverse problems (Cardoso et al., 2023)
    | https://arxiv.org/abs/2308.07983

    | Tweedie Moment Projected Diffusions for Inverse Problems (Boys et al., 2023)
    | https://arxiv.org/abs/2310.06721
"""

# ruff: noqa: RUF001 - the Markdown report writes σ, α, × and − on purpose

from __future__ import annotations

import argparse
import datetime
import math
import statistics
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from common import machine, publish, reproduce
from torch import Tensor

import condgen as cg
from condgen.evaluate import GaussianMixtureInverseProblem, sliced_wasserstein
from condgen.methods import DPS, SMC, TDS, PiGDM
from condgen.priors import GaussianMixturePrior
from condgen.priors.counting import EvaluationCounter

SECTION = "Gaussian-mixture inverse problem"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
NUM_PROJECTIONS = 1024

# Methods of condgen.methods.available() that this benchmark does not run, and why.
SKIPPED = {
    "svi": "fits a guide by optimisation; it does not use the denoiser (not a peer here)",
    "classifier": "needs a noise-conditional classifier, not an observation site",
    "cfg": "needs a conditional prior trained with context dropout",
}


def check_denoiser() -> float:
    r"""Largest error of condgen's exact denoiser against Tweedie's formula
    :math:`(x_t + \sigma_t^2 \nabla \log p_t(x_t)) / \alpha_t` with the gradient of torch's
    ``MixtureSameFamily`` density taken by autograd, in double precision at :math:`d = 8`,
    relative to the largest denoised coordinate.

    Raises:
        AssertionError: If the relative error exceeds 1e-5.
    """
    prior = GaussianMixtureInverseProblem(8, 2, seed=123).prior
    prior = GaussianMixturePrior(*(v.double() for v in (prior.weights, prior.means, prior.covs)))
    x = 10 * torch.randn(256, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    error = 0.0
    for t in (0.01, 0.2, 0.5, 0.9):
        x_t = x.clone().requires_grad_()
        (score,) = torch.autograd.grad(prior.mixture(t).log_prob(x_t).sum(), x_t)
        alpha, sigma = prior.schedule(torch.tensor(t, dtype=torch.float64))
        tweedie = (x + sigma**2 * score) / alpha
        exact = prior.denoise(x, t)
        error = max(error, float((exact - tweedie).abs().max() / tweedie.abs().max()))
    assert error < 1e-5, f"the exact denoiser differs from Tweedie's formula by {error:.1e}"
    return error


def _draws(posterior: cg.Posterior, num_samples: int) -> Tensor:
    """Equally weighted draws of site x, shaped [num_samples, d]."""
    if posterior.log_weights is not None:
        posterior = posterior.resample(num_samples)
    return posterior.flatten()["x"][:num_samples]


def run_condgen(
    task: GaussianMixtureInverseProblem,
    method,
    num_samples: int,
    seed: int,
    num_draws: int | None = None,
    **options,
) -> dict:
    r"""Runs a condgen method through :func:`condgen.condition` with ``num_samples`` particles
    (draws), and keeps ``num_draws`` (default ``num_samples``) equally weighted draws.

    Returns:
        ``draws`` (resampled when weighted), wall ``time`` of the call, ``run_time`` (the
        method's own ``stats["time_s"]``, without tracing the model), ``nfe`` and ``ess``.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pareto k-hat warnings of importance sampling
        start = time.perf_counter()
        posterior = cg.condition(
            task.model,
            task.data,
            method=method,
            num_samples=num_samples,
            seed=seed,
            progress=False,
            **options,
        )
        elapsed = time.perf_counter() - start
    return {
        "draws": _draws(posterior, num_draws or num_samples),
        "time": elapsed,
        "run_time": posterior.stats["time_s"],
        "nfe": posterior.stats.get("nfe"),
        "ess": posterior.stats.get("ess"),
    }


def prior_draws(task: GaussianMixtureInverseProblem, num_samples: int, seed: int) -> dict:
    r"""Exact draws of the prior: the distance of an unconditioned sampler."""
    with torch.random.fork_rng():
        torch.manual_seed(30_000 + seed)
        draws = task.prior.sample((num_samples,))
    return {"draws": draws, "time": 0.0, "nfe": 0, "ess": None}


def azula_samplers() -> dict[str, Callable] | None:
    r"""Builders of azula's DPS, PGDM and TDS samplers on a condgen path prior, or None when
    azula is not installed.

    azula's denoisers return a posterior over :math:`x` (here a Dirac at the exact mean) and
    carry a schedule ``alpha_t, sigma_t = schedule(t)``, the convention condgen's schedules
    follow, so the wrapper passes both through. Each builder takes ``(prior, task, steps,
    t_min, option)`` and returns a callable ``x_1 -> x_{t_min}``.
    """
    try:
        from azula.denoise import Denoiser, DiracPosterior
        from azula.guidance import DPSSampler, PGDMSampler, TDSSampler
    except ImportError:
        return None

    class ExactDenoiser(Denoiser):
        """A condgen path prior's denoiser in azula's interface."""

        def __init__(self, prior):
            super().__init__()
            self.prior, self.schedule = prior, prior.schedule

        def forward(self, x_t: Tensor, t: Tensor, **kwargs) -> DiracPosterior:
            return DiracPosterior(mean=self.prior.denoise(x_t, t))

    def operator(task):
        A = task.operator
        return (lambda x: x @ A.T), A

    def dps(prior, task, steps, t_min, zeta):
        forward, _ = operator(task)
        return DPSSampler(
            ExactDenoiser(prior), task.data["y"], forward, zeta=zeta,
            start=1.0, stop=t_min, steps=steps, silent=True,
        )  # fmt: skip

    def pgdm(prior, task, steps, t_min, _):
        forward, A = operator(task)
        pinv = torch.linalg.pinv(A)
        return PGDMSampler(
            ExactDenoiser(prior), task.data["y"], forward, lambda y: y @ pinv.T, eta=1.0,
            start=1.0, stop=t_min, steps=steps, silent=True,
        )  # fmt: skip

    def tds(prior, task, steps, t_min, schedule):
        forward, _ = operator(task)
        y, noise = task.data["y"], task.noise

        def twist(x_hat: Tensor, ratio: Tensor) -> Tensor:
            # the same twist as condgen's TDS: lambda_t log p(y | x_hat), lambda_t = 1 or
            # alpha^2 / (alpha^2 + sigma^2) = 1 / (1 + (sigma / alpha)^2)
            scale = 1.0 if schedule == "constant" else 1 / (1 + ratio**2)
            log_lik = torch.distributions.Normal(forward(x_hat), noise).log_prob(y).sum(-1)
            return scale * log_lik

        return TDSSampler(
            ExactDenoiser(prior), twist, start=1.0, stop=t_min, steps=steps, silent=True
        )

    return {"dps": dps, "pigdm": pgdm, "tds": tds}


def run_azula(
    builder: Callable,
    task: GaussianMixtureInverseProblem,
    num_samples: int,
    steps: int,
    seed: int,
    option,
) -> dict:
    r"""Runs an azula sampler from :math:`x_1 \sim \mathcal{N}(0, \sigma_1^2 I)` to
    :math:`t_\text{min}` on condgen's time grid, then denoises once, as condgen's samplers do
    (so both make the same number of denoiser evaluations).

    Returns:
        ``draws``, wall ``time`` and ``nfe``.
    """
    prior = task.prior
    t_min = max(prior.schedule.t_min, 1e-5)
    with torch.random.fork_rng(), EvaluationCounter() as counter:
        torch.manual_seed(seed)
        start = time.perf_counter()
        sampler = builder(prior, task, steps, t_min, option)
        _, sigma_1 = prior.schedule(torch.tensor(1.0))
        x = sigma_1 * torch.randn(num_samples, *prior.event_shape)
        x = sampler(x)
        with torch.no_grad():
            x = prior.denoise(x, torch.tensor(t_min))
        elapsed = time.perf_counter() - start
    return {
        "draws": x.detach(),
        "time": elapsed,
        "run_time": elapsed,
        "nfe": counter.per_particle(num_samples)["nfe"],
        "ess": None,
    }


def plan(steps: int, nuts: bool) -> list[tuple[str, str, Callable, str | None, Callable]]:
    r"""The rows of the benchmark: ``(label, condgen method name, condgen run, azula peer,
    azula option of the task)``.

    The DPS step of condgen is :math:`\zeta / \|r_i\|` on :math:`\nabla \log p(y \mid \hat
    x_0)` with the standardised residual :math:`r_i = (y - A \hat x_0^{(i)}) / \sigma_y`, that
    is :math:`(\zeta / \sigma_y) \nabla \|y - A \hat x_0^{(i)}\|`; azula's is :math:`\zeta'
    \nabla \|y - A \hat X_0\|` with the norm over the whole batch. The peer of
    ``scale=zeta`` is therefore ``zeta' = zeta / sigma_y`` (the same step if azula normalised
    per particle). Two scales are run: condgen's default and :math:`\sigma_y` (azula's default
    :math:`\zeta' = 1`).
    """

    def condgen_method(method, **options):
        def run(task, n, seed):
            return run_condgen(task, method, n, seed, **options)

        return run

    def dps_scaled(task, n, seed):
        return run_condgen(task, DPS(scale=task.noise, steps=steps), n, seed)

    def importance_matched(task, n, seed):
        # as many prior draws as SMC evaluates its twist: n particles at steps + 1 times
        return run_condgen(task, "importance", n * (steps + 1), seed, n, proposal="prior")

    default = DPS().scale
    rows = [
        ("prior (no conditioning)", "-", prior_draws, None, None),
        ("smc (default exact sampler)", "smc", condgen_method(SMC(steps=steps)), None, None),
        (
            f"dps (scale={default:g}, default)",
            "dps",
            condgen_method(DPS(scale=default, steps=steps)),
            "dps",
            lambda task: default / task.noise,
        ),
        ("dps (scale=σ_y)", "dps", dps_scaled, "dps", lambda task: 1.0),
        ("pigdm", "pigdm", condgen_method(PiGDM(steps=steps)), "pigdm", None),
        ("tds (snr twist)", "tds", condgen_method(TDS(steps=steps)), "tds", lambda task: "snr"),
        (
            "tds (constant twist)",
            "tds",
            condgen_method(TDS(steps=steps, twist_schedule="constant")),
            "tds",
            lambda task: "constant",
        ),
    ]
    if "langevin" in cg.methods.available():
        rows.append(("langevin", "langevin", condgen_method("langevin", steps=steps), None, None))
    rows.append(
        (
            "importance (prior)",
            "importance",
            condgen_method("importance", proposal="prior"),
            None,
            None,
        )
    )
    rows.append(
        (
            f"importance (prior, {steps + 1}× draws: smc's likelihood evaluations)",
            "importance",
            importance_matched,
            None,
            None,
        )
    )
    if nuts:
        rows.append(("nuts", "nuts", condgen_method("nuts"), None, None))
    return rows


def not_run(nuts: bool) -> dict[str, str]:
    r"""The methods of :func:`condgen.methods.available` that :func:`plan` does not run, with
    the reason."""
    ran = {row[1] for row in plan(10, nuts)}
    reasons = {**SKIPPED, "nuts": "only with --nuts (d = 8): about a minute per problem on CPU"}
    return {
        name: reasons.get(name, "not known to this benchmark")
        for name in cg.methods.available()
        if name not in ran
    }


def _attempt(run: Callable, *args) -> dict:
    """Runs a sampler; a numerical failure becomes a record with its message."""
    try:
        return run(*args)
    except (FloatingPointError, RuntimeError, ValueError) as error:
        message = str(error).split(";")[0].split("\n")[0]
        return {"draws": None, "time": math.nan, "nfe": None, "ess": None, "error": message}


def score(result: dict, reference: Tensor) -> dict:
    r"""The sliced Wasserstein distance of a run's draws to the exact draws, with its time,
    NFE, ESS and failure (a run that raised, or whose draws are not finite, scores NaN)."""
    draws, sw = result["draws"], math.nan
    if draws is not None and torch.isfinite(draws).all():
        sw = float(sliced_wasserstein(draws, reference, NUM_PROJECTIONS))
    error = result.get("error")
    if draws is not None and not math.isfinite(sw):
        error = "non-finite draws"
    return {
        "sw": sw,
        "time": result["time"],
        "nfe": result["nfe"],
        "ess": result["ess"],
        "error": error,
    }


def benchmark(
    dims: list[int],
    obs_dims: list[int],
    seeds: int,
    num_samples: int,
    steps: int,
    nuts: bool = False,
    log: Callable[[str], None] = print,
) -> list[dict]:
    r"""Runs every row of :func:`plan` on every problem and scores it.

    Returns:
        One record per (d, dy, seed, method, library): ``sw`` (sliced Wasserstein to exact
        posterior draws; NaN when the run failed or gave non-finite draws), ``time`` (s),
        ``nfe``, ``ess``, ``error`` (the failure, or None).
    """
    peers = azula_samplers()
    if peers is None:
        log("azula is not installed (pip install --no-deps azula einops): no peer rows")
    records = []
    for d in dims:
        for dy in obs_dims:
            for seed in range(seeds):
                start, failures = time.perf_counter(), []
                task = GaussianMixtureInverseProblem(d, dy, seed=seed)
                reference = task.reference_samples(num_samples, seed=10_000 + seed)["x"]
                second = task.reference_samples(num_samples, seed=20_000 + seed)["x"]

                results = [({"draws": second, "time": 0.0, "nfe": 0, "ess": None}, "exact", "-")]
                for label, _, run, peer, option in plan(steps, nuts and d <= 8):
                    results.append((_attempt(run, task, num_samples, seed), label, "condgen"))
                    if peers is not None and peer is not None:
                        value = option(task) if option is not None else None
                        result = _attempt(
                            run_azula, peers[peer], task, num_samples, steps, seed, value
                        )
                        results.append((result, label, "azula"))
                for result, label, library in results:
                    record = score(result, reference)
                    records.append(
                        {"d": d, "dy": dy, "seed": seed, "method": label, "library": library,
                         **record}
                    )  # fmt: skip
                    if record["error"]:
                        failures.append(f"  {library} {label}: failed ({record['error']})")
                log(
                    f"d={d:<4} dy={dy} seed={seed} sigma_y={task.noise:.3f} "
                    f"({time.perf_counter() - start:.1f} s)"
                )
                for line in failures:
                    log(line)
    return records


def overhead(d: int, num_samples: int, steps: int, repeats: int) -> dict[str, dict]:
    r"""Time per step and particle of condgen's and azula's DPS and TDS on one problem
    (:math:`d_y = 1`, seed 0), at equal NFE, interleaved and taking the fastest of
    ``repeats`` runs; call with ``torch.set_num_threads(1)``.

    condgen's time is the method's own (``stats["time_s"]``: sampling, the final denoising
    and weighting), azula's that of its sampler plus the same final denoising; condgen's
    whole call (which also traces the model into a Problem) is reported beside it.

    Returns:
        For ``"dps"`` and ``"tds"``: ``condgen``, ``condgen_call`` and ``azula`` times (µs per
        step per particle), ``ratio`` (run time) and ``call_ratio``, ``nfe``.
    """
    peers = azula_samplers()
    if peers is None:
        return {}
    task = GaussianMixtureInverseProblem(d, 1, seed=0)
    scale = DPS().scale
    runs = {
        "dps": (
            lambda: run_condgen(task, DPS(scale=scale, steps=steps), num_samples, 0),
            lambda: run_azula(peers["dps"], task, num_samples, steps, 0, scale / task.noise),
        ),
        "tds": (
            lambda: run_condgen(task, TDS(steps=steps), num_samples, 0),
            lambda: run_azula(peers["tds"], task, num_samples, steps, 0, "snr"),
        ),
    }
    best = defaultdict(lambda: math.inf)
    nfe = {}
    for _ in range(repeats):
        for name, (ours, theirs) in runs.items():
            for library, run in (("condgen", ours), ("azula", theirs)):
                result = _attempt(run)
                if result.get("error"):
                    continue
                best[name, library] = min(best[name, library], result["run_time"])
                best[name, library + "_call"] = min(best[name, library + "_call"], result["time"])
                nfe[name, library] = result["nfe"]
    unit = 1e6 / (steps * num_samples)
    return {
        name: {
            "condgen": best[name, "condgen"] * unit,
            "condgen_call": best[name, "condgen_call"] * unit,
            "azula": best[name, "azula"] * unit,
            "ratio": best[name, "condgen"] / best[name, "azula"],
            "call_ratio": best[name, "condgen_call"] / best[name, "azula"],
            "nfe": (nfe.get((name, "condgen")), nfe.get((name, "azula"))),
        }
        for name in runs
    }


def _number(value: float) -> str:
    return f"{value:.2f}" if abs(value) < 1e4 else f"{value:.1e}"


def _summary(records: list[dict]) -> str:
    """The sliced Wasserstein over seeds (each value for up to 3 seeds, else median (min–max)),
    and the failed runs."""
    values = sorted(r["sw"] for r in records if math.isfinite(r["sw"]))
    failed = len(records) - len(values)
    if not values:
        text = "failed"
    elif len(values) <= 3:
        text = ", ".join(_number(v) for v in values)
    else:
        median = statistics.median(values)
        text = f"{_number(median)} ({_number(values[0])}–{_number(values[-1])})"
    if failed and values:
        text += f" ({failed}/{len(records)} failed)"
    return text


def results_table(records: list[dict]) -> str:
    r"""Markdown table: one row per (d, dy, method), condgen beside its azula peer; sliced
    Wasserstein per seed (sorted) or median (min–max) over more seeds, with the failed runs;
    mean time of the runs that finished; NFE per run."""
    groups = defaultdict(list)
    order = []
    for record in records:
        key = (record["d"], record["dy"], record["method"])
        if key not in groups:
            order.append(key)
        groups[key].append(record)
    lines = [
        "| d | d_y | method | SW condgen | SW azula | time condgen (s) | time azula (s) | NFE |",
        "|---:|---:|---|---|---|---:|---:|---:|",
    ]

    def seconds(rows):
        times = [r["time"] for r in rows if math.isfinite(r["time"])]
        return f"{statistics.fmean(times):.2f}" if times else "—"

    for key in order:
        d, dy, method = key
        by_library = defaultdict(list)
        for record in groups[key]:
            by_library[record["library"]].append(record)
        ours = by_library.get("condgen") or by_library.get("-")
        theirs = by_library.get("azula")
        nfe = next((r["nfe"] for r in ours if r["nfe"] is not None), "—")
        if theirs:
            peer_nfe = next((r["nfe"] for r in theirs if r["nfe"] is not None), nfe)
            nfe = nfe if peer_nfe == nfe else f"{nfe} / {peer_nfe}"
        if method == "exact":
            method = "exact posterior, 2nd draw (SW floor)"
        if method in ("exact posterior, 2nd draw (SW floor)", "prior (no conditioning)"):
            time_ours, nfe = "—", "—"
        else:
            time_ours = seconds(ours)
        lines.append(
            f"| {d} | {dy} | {method} | {_summary(ours)} "
            f"| {_summary(theirs) if theirs else '—'} | {time_ours} "
            f"| {seconds(theirs) if theirs else '—'} | {nfe} |"
        )
    return "\n".join(lines)


def acceptance(records: list[dict], steps: int) -> str:
    r"""The acceptance check of the default exact sampler, per d and problem: its SW is within
    0.25 of the two-sample floor, and no worse than importance sampling from the prior at equal
    evaluations of the model's likelihood.

    ``smc`` calls the model's likelihood once per particle (its final weights); its twist at the
    other ``steps`` times is a closed-form Gaussian of the linear observation. So the matched
    peer is "importance (prior)" with as many draws as particles (also equal NFE: one prior
    draw costs ``steps`` denoiser calls for ``smc``, none here). The comparison with
    ``steps + 1`` times as many draws, as if every twist were a likelihood call, is reported
    beside it.
    """
    sw = {(r["d"], r["dy"], r["seed"], r["method"], r["library"]): r["sw"] for r in records}
    smc, floor = "smc (default exact sampler)", "exact"
    peers = {
        "equal likelihood calls": "importance (prior)",
        f"{steps + 1}× draws": (
            f"importance (prior, {steps + 1}× draws: smc's likelihood evaluations)"
        ),
    }
    lines = []
    for d in sorted({r["d"] for r in records}):
        problems = sorted({(r["dy"], r["seed"]) for r in records if r["d"] == d})
        scores = {
            method: [sw[d, dy, seed, method, "condgen"] for dy, seed in problems]
            for method in (smc, "tds (snr twist)", *peers.values())
        }
        floors = [sw[d, dy, seed, floor, "-"] + 0.25 for dy, seed in problems]
        near = {m: sum(map(float.__le__, scores[m], floors)) for m in (smc, "tds (snr twist)")}
        versus = "; ".join(
            f"no worse than importance sampling ({label}) on "
            f"{sum(map(float.__le__, scores[smc], scores[method]))} of {len(problems)}"
            for label, method in peers.items()
        )
        lines.append(
            f"* d = {d}: `smc` within 0.25 of the floor on {near[smc]} of {len(problems)} "
            f"problems (`tds`: {near['tds (snr twist)']}); {versus}."
        )
    return "Acceptance of the default exact sampler (SW ≤ floor + 0.25):\n\n" + "\n".join(lines)


def overhead_table(results: dict[int, dict]) -> str:
    r"""Markdown table of :func:`overhead` results, one row per (d, sampler)."""
    lines = [
        "| d | sampler | condgen run | condgen call | azula | condgen / azula "
        "| (whole call) | NFE (condgen / azula) |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for d, by_name in results.items():
        for name, r in by_name.items():
            lines.append(
                f"| {d} | {name} | {r['condgen']:.2f} | {r['condgen_call']:.2f} "
                f"| {r['azula']:.2f} | {r['ratio']:.2f} | {r['call_ratio']:.2f} "
                f"| {r['nfe'][0]} / {r['nfe'][1]} |"
            )
    return "\n".join(lines)


PROTOCOL = """\
Setup of Cardoso et al. (2023), as in the authors' code (`scripts/viz_gaussian.py` of
[gabrielvc/mcg_diff](https://github.com/gabrielvc/mcg_diff) and `datasets/gaussian_mixture.py`
of [gabrielvc/benchopts_inverse_problem_diffusion_prior](https://github.com/gabrielvc/benchopts_inverse_problem_diffusion_prior)):
a prior of 25 unit-covariance Gaussians with means (8i, 8j, 8i, 8j, ...) for i, j in
{-2, ..., 2} (coordinates in {-16, -8, 0, 8, 16}) and weights w_k ∝ ε_k², ε_k ~ N(0, 1); a
Gaussian A of shape [d_y, d] whose singular values are replaced by sorted U(0, 1) draws;
σ_y = u · max_i s_i with u ~ U(0, 1); y = A x + σ_y n with x drawn from the prior; all of it
drawn anew for each seed. Boys et al. (2023) use the same prior and operator with uniform
weights and fixed σ_y in {0.01, 0.1, 1} (`gmm.py` of
[bb515/tmpdjax](https://github.com/bb515/tmpdjax)).

Here: `condgen.evaluate.GaussianMixtureInverseProblem(d, d_y, seed=seed)`, whose default is
this setting, with a `GaussianMixturePrior` on condgen's VP path (β from 0.1 to 20, the
continuous form of DDPM's linear 1e-4 ... 0.02 schedule), <steps> uniform steps from t = 1 to
t = 1e-3 for every sampler, <particles> particles, and `condgen.evaluate.sliced_wasserstein` (SW₂
over <projections> random directions) against <particles> exact posterior draws,
`task.reference_samples` (drawn component by component, each with its own Cholesky factor:
no N K d² intermediate, which would be 64 GB at d = 800). The row "exact posterior" is the distance
between two independent sets of exact draws: the floor that <particles> draws allow. Weighted
draws (TDS, importance) are resampled (systematic) to <particles> equally weighted draws. SW is
listed per seed (sorted; median (min–max) beyond 3 seeds), with the runs that failed (an error,
or non-finite draws); time is the mean wall time of one call, NFE the number of denoiser
evaluations (for importance sampling: likelihood evaluations).

`smc` is condgen's default exact sampler (`condgen.methods.SMC`): a Gaussian twist built from
the prior's mean and covariance, the locally optimal proposal for the linear-Gaussian
observation and resampling before each move; one denoiser evaluation per particle and step and
no gradient. The row "importance (prior, K× draws)" gives importance sampling as many prior
draws as `smc` makes twist (likelihood) evaluations, resampled to <particles> draws.

The exact denoiser is `GaussianMixturePrior.denoise` (relative error <check> against Tweedie's
formula with torch's `MixtureSameFamily` density, in double precision at d = 8); with these
identity covariances it costs O(N K d) operations a call.

Peers (azula, the same denoiser, time grid and start x₁ ~ N(0, σ₁² I), plus one final
denoising so that NFE match):

* DPS: condgen steps by (ζ / σ_y) ∇‖y − A x̂₀⁽ⁱ⁾‖ for each particle i; azula by
  ζ' ∇‖y − A X̂₀‖ with the norm over the whole batch, so that each particle gets about 1/√N of
  the step. The peer of scale=ζ is ζ' = ζ / σ_y; the row "scale=σ_y" is azula's default ζ' = 1.
* PiGDM: condgen's is noise-aware (Σ_t = σ_y² I + r_t² A Aᵀ, by Cholesky); azula's
  `PGDMSampler` uses the pseudo-inverse A⁺ and ignores σ_y (run with η = 1).
* TDS: the same twist λ_t log p(y | x̂₀) (λ_t = α_t² / (α_t² + σ_t²) for "snr", 1 for
  "constant"). condgen resamples (systematic) when the ESS falls below N/2 and applies the
  final weights; azula 0.11 resamples (multinomial) at every step and returns its last
  particles without their final weights. The proposals differ too: condgen shifts the
  ancestral mean by c² ∇ log p̃ (c² the step's variance), azula puts the gradient into the
  denoised estimate (a shift (α_s² σ_t² − α_t² σ_s²) / (α_s α_t) ∇ log p̃, larger near t = 0);
  each weights its own proposal correctly.
"""


def _azula_version() -> str:
    try:
        import azula
    except ImportError:
        return "azula not installed"
    return f"azula {azula.__version__}"


def report(
    records: list[dict],
    overheads: dict[int, dict],
    args: argparse.Namespace,
    check: float,
) -> str:
    r"""The Markdown section: machine, date, commands, protocol, tables and published figures."""
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = reproduce("gmm_inverse.py", args.argv)
    skipped = "; ".join(f"`{k}`: {v}" for k, v in not_run(args.nuts).items())
    ran = sorted({(r["d"], r["dy"]) for r in records})
    seeds = max(r["seed"] for r in records) + 1
    parts = [
        f"## {SECTION}",
        "",
        f"Run on {date}: {machine([_azula_version()])}.",
        "",
        "Reproduce (from the repository root):",
        "",
        "```bash",
        "pip install --no-deps azula einops",
        command.strip(),
        "```",
        "",
        f"Problems: (d, d_y) in {ran}, {seeds} seed(s) each.",
        "",
        PROTOCOL.replace("<steps>", str(args.steps))
        .replace("<particles>", str(args.particles))
        .replace("<projections>", str(NUM_PROJECTIONS))
        .replace("<check>", f"{max(check, 1e-7):.0e}")
        .rstrip(),
        "",
        f"Methods of `condgen.methods.available()` not run: {skipped}.",
        "",
        "### Sliced Wasserstein to the exact posterior",
        "",
        results_table(records),
        "",
        acceptance(records, args.steps),
        "",
    ]
    if overheads:
        parts += [
            "### Per-step overhead, condgen / azula",
            "",
            f"µs per step per particle. DPS (scale={DPS().scale:g}) and TDS (snr twist) on the "
            f"d_y = 1, seed 0 problem, {args.particles} particles, {args.steps} steps, the "
            f"fastest of {args.repeats} interleaved runs, `torch.set_num_threads(1)`, equal "
            'NFE; the target is a ratio within 1.10. "condgen run" is the method\'s own time '
            "(`stats['time_s']`), \"condgen call\" the whole `condgen.condition` call, which "
            "also traces the Pyro model into a Problem and checks that it vectorises.",
            "",
            overhead_table(overheads),
            "",
        ]
    parts += [
        "### Published figures",
        "",
        "This setting comes from Cardoso et al. (2023), *Monte Carlo guided Diffusion for "
        "Bayesian linear inverse problems* (arXiv:2308.07983, ICLR 2024), and is reused by "
        "Boys et al. (2023), *Tweedie Moment Projected Diffusions for Inverse Problems* "
        "(arXiv:2310.06721), whose code runs d in {8, 80, 800}, d_y in {1, 2, 4}, 20 "
        "repetitions, with TMPD, DPS and ΠGDM. **No published figures are quoted here**: the "
        "papers' result tables could not be retrieved where this benchmark was written (only "
        "the authors' code was), so their values and table numbers are left to the reader to "
        "take from the papers. They are not on the scale of the columns above anyway: the "
        "authors' samplers run on 1000-step DDPM schedules, and their distances differ (the "
        "MCGDiff benchmark code uses POT's max-sliced Wasserstein over 100 directions; Boys "
        "et al.'s code reports POT's sliced 2-Wasserstein and a mean 1-Wasserstein, both over "
        "10,000 directions; here SW₂ over 1024 directions).",
        "",
    ]
    return "\n".join(parts)


def parse(argv: list[str]) -> argparse.Namespace:
    r"""Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[8, 80, 800], help="d")
    parser.add_argument("--obs-dims", type=int, nargs="+", default=[1, 2, 4], help="d_y")
    parser.add_argument("--seeds", type=int, default=3, help="problems per (d, d_y)")
    parser.add_argument("--particles", type=int, default=1000, help="draws per method")
    parser.add_argument("--steps", type=int, default=100, help="sampler steps")
    parser.add_argument("--repeats", type=int, default=3, help="runs per overhead timing")
    parser.add_argument("--nuts", action="store_true", help="also run NUTS at d = 8 (slow)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--output", type=Path, default=None, help=f"default {DOCS}")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--quick", action="store_true", help="smoke run (under a minute)")
    args = parser.parse_args(argv)
    args.argv = argv
    if args.quick:
        args.dims, args.obs_dims, args.seeds = [8], [1, 4], 1
        args.particles, args.steps, args.repeats = 256, 50, 1
    if args.output is None and not args.quick:
        args.output = DOCS
    if any(d % 2 for d in args.dims):
        parser.error("--dims must be even (the means repeat a 2-D grid)")
    return args


def main(argv: list[str] | None = None) -> str:
    r"""Runs the benchmark, prints the report and writes it (unless ``--quick`` without
    ``--output``, or ``--no-write``)."""
    args = parse(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    check = check_denoiser()
    print(f"machine: {machine([_azula_version()])}")
    print(
        f"running d={args.dims} d_y={args.obs_dims} seeds={args.seeds} "
        f"particles={args.particles} steps={args.steps} nuts={args.nuts}"
    )
    print(f"methods available: {cg.methods.available()}; not run: {sorted(not_run(args.nuts))}")
    records = benchmark(
        args.dims, args.obs_dims, args.seeds, args.particles, args.steps, args.nuts
    )
    overheads = {}
    for d in [d for d in args.dims if d <= 80] or args.dims[:1]:
        overheads[d] = overhead(d, args.particles, args.steps, args.repeats)
        print(f"overhead d={d}: done")
    overheads = {d: o for d, o in overheads.items() if o}
    text = report(records, overheads, args, check)
    return publish(text, args, start)


if __name__ == "__main__":
    main()
