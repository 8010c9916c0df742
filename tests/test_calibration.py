"""Tests of condgen.evaluate.calibration: SBC ranks, expected coverage, uniformity and plots.

Every calibration runs with a fixed seed, so each test is deterministic; the thresholds are
chosen so that a correct implementation would fail them with a known small probability over
seeds (stated at each assertion).
"""

import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import matplotlib.pyplot as plt
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from condgen.evaluate import NormalNormal
from condgen.evaluate.calibration import Calibration, calibration
from condgen.evaluate.ranks import ecdf_uniformity_test
from condgen.methods.base import Method
from condgen.posterior import Posterior
from condgen.problem import Problem

TASK = NormalNormal(dim=2, num_obs=3)


class ConjugateNormal(Method):
    """Exact Normal-Normal posterior draws for the problem's observations, sd scaled by
    ``sd_scale`` (1 exact, < 1 over-confident, > 1 under-confident). Passed as an object,
    never registered; module-level, so that worker processes can unpickle it."""

    name = "conjugate-normal"
    family = "bayesian"

    def __init__(self, task: NormalNormal, sd_scale: float = 1.0):
        self.task = task
        self.sd_scale = sd_scale

    def run(self, problem: Problem, num_samples: int, progress: bool = True) -> Posterior:
        y, task = problem.observations["y"], self.task
        var = 1 / (1 / task.prior_scale**2 + len(y) / task.noise**2)
        mean = var * (task.prior_loc / task.prior_scale**2 + y.sum(0) / task.noise**2)
        x = mean + self.sd_scale * math.sqrt(var) * torch.randn(num_samples, *mean.shape)
        return Posterior(problem, {"x": x.unsqueeze(0)}, method=self.name)


PROBS = torch.tensor([0.2, 0.5, 0.3])


def discrete_model(y=None):
    """A discrete latent observed through ``obs=``: ``k ~ Categorical``, ``y ~ N(k, 1)``."""
    k = pyro.sample("k", dist.Categorical(PROBS))
    pyro.sample("y", dist.Normal(k.float(), 1.0), obs=y)


class ExactCategorical(Method):
    """Exact posterior draws of ``k`` in :func:`discrete_model`: heavy ties among the draws."""

    name = "exact-categorical"
    family = "bayesian"

    def run(self, problem: Problem, num_samples: int, progress: bool = True) -> Posterior:
        y = problem.observations["y"]
        logits = PROBS.log() + dist.Normal(torch.arange(3.0), 1.0).log_prob(y)
        k = dist.Categorical(logits=logits).sample((1, num_samples))
        return Posterior(problem, {"k": k}, method=self.name)


def _tolerance(level: float, num: int, sds: float = 4.0) -> float:
    # sds binomial standard deviations of a coverage estimated from num simulations
    return sds * math.sqrt(level * (1 - level) / num)


@pytest.fixture(scope="module")
def exact() -> Calibration:
    return calibration(
        TASK.model,
        ConjugateNormal(TASK),
        observed=TASK.data,
        num_simulations=200,
        num_samples=99,
        seed=0,
        progress=False,
    )


def test_exact_posterior_passes(exact):
    """Exact draws give uniform ranks: the test passes and coverage is nominal."""
    assert exact.ranks["x"].shape == (200, 2)
    assert exact.num_samples == 99 and exact.method == "conjugate-normal"
    assert exact.ranks["x"].min() >= 0 and exact.ranks["x"].max() <= 99
    # family-wise level 0.01: fails for 1% of seeds
    assert exact.passed(alpha=0.01)
    coverage = exact.expected_coverage([0.5, 0.9, 0.95])
    assert list(coverage.columns) == ["x[0]", "x[1]", "mean"]
    for level in (0.5, 0.9, 0.95):
        # 4 binomial sds per coordinate: fails for ~1e-4 of seeds
        assert (coverage.loc[level] - level).abs().max() < _tolerance(level, 200)
    summary = exact.summary()
    assert list(summary.index) == ["x[0]", "x[1]"]
    assert {"site", "index", "p_value", "coverage_50", "coverage_90", "coverage_95"} <= set(
        summary.columns
    )
    assert summary["site"].tolist() == ["x", "x"] and summary["index"].tolist() == [(0,), (1,)]
    assert summary["coverage_90"].tolist() == pytest.approx(coverage.loc[0.9].iloc[:2].tolist())


@pytest.mark.parametrize("sd_scale", [0.5, 2.0])
def test_miscalibrated_posteriors_are_flagged(sd_scale):
    """sd / 2: the central 90% interval holds the truth with P(|Z| < 0.82) = 0.59; sd x 2:
    the central 50% interval holds it with P(|Z| < 1.35) = 0.82."""
    cal = calibration(
        TASK.model,
        ConjugateNormal(TASK, sd_scale=sd_scale),
        observed=["y"],
        num_simulations=100,
        num_samples=99,
        seed=1,
        progress=False,
    )
    assert not cal.passed(alpha=0.01)
    assert (cal.uniformity()["p_adjusted"] < 1e-4).all()
    coverage = cal.expected_coverage([0.5, 0.9]).loc[:, "mean"]
    # the thresholds sit > 6 sds of a 100-simulation coverage from both truths
    if sd_scale < 1:
        assert coverage[0.9] < 0.75
    else:
        assert coverage[0.5] > 0.7 and coverage[0.9] > 0.95


@pytest.mark.filterwarnings("ignore:method 'importance' warned in")
def test_importance_end_to_end():
    """Importance sampling from the prior is consistent: at 500 particles on a 1-D problem
    with ESS ~ 400 its ranks pass (family-wise level 0.01) and coverage is nominal."""
    task = NormalNormal(dim=1, num_obs=1)
    cal = calibration(
        task.model,
        "importance",
        observed=task.data,
        num_simulations=100,
        num_samples=500,
        seed=0,
        progress=False,
        proposal="prior",
    )
    assert cal.method == "importance" and cal.ranks["x"].shape == (100, 1)
    assert cal.num_samples == 500
    assert cal.passed(alpha=0.01)
    coverage = cal.expected_coverage([0.5, 0.9]).loc[:, "mean"]
    assert abs(coverage[0.5] - 0.5) < _tolerance(0.5, 100)
    assert abs(coverage[0.9] - 0.9) < _tolerance(0.9, 100)


def test_discrete_latent_ties_and_obs_in_model():
    """With obs= in the model the observed site needs no naming, and random tie-breaking keeps
    the ranks of a 3-valued latent uniform."""
    cal = calibration(
        discrete_model,
        ExactCategorical(),
        kwargs={"y": torch.tensor(0.0)},
        num_simulations=200,
        num_samples=20,
        seed=3,
        progress=False,
    )
    assert list(cal.ranks) == ["k"] and cal.ranks["k"].shape == (200,)
    assert cal.passed(alpha=0.01)  # fails for 1% of seeds
    counts = np.bincount(cal.ranks["k"].numpy(), minlength=21)
    assert (counts > 0).sum() > 15  # ties spread over the ranks, not piled at a few values


def test_method_warnings_are_summarised():
    """A warning of the method in many simulations comes back once, with a count."""
    task = NormalNormal(dim=1, num_obs=20)  # prior proposal far too wide: Pareto k > 0.7
    with pytest.warns(UserWarning, match=r"warned in \d+ of 10 simulations") as record:
        calibration(
            task.model,
            "importance",
            observed=["y"],
            num_simulations=10,
            num_samples=50,
            progress=False,
            proposal="prior",
        )
    assert len(record) == 1


def test_same_seed_same_ranks_locally_and_in_processes():
    """Each simulation depends on its seeds only: repeated runs, and runs in spawned worker
    processes (the model and method pickled), give identical ranks."""
    options = dict(observed=["y"], num_simulations=12, num_samples=30, progress=False)
    first = calibration(TASK.model, ConjugateNormal(TASK), seed=5, **options)
    again = calibration(TASK.model, ConjugateNormal(TASK), seed=5, **options)
    other = calibration(TASK.model, ConjugateNormal(TASK), seed=6, **options)
    assert torch.equal(first.ranks["x"], again.ranks["x"])
    assert np.array_equal(first.seeds, again.seeds)
    assert not torch.equal(first.ranks["x"], other.ranks["x"])
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=context) as pool:
        remote = calibration(TASK.model, ConjugateNormal(TASK), seed=5, executor=pool, **options)
    assert torch.equal(first.ranks["x"], remote.ranks["x"])


def test_plot_has_ecdf_and_coverage_panels(exact):
    fig = exact.plot()
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["x[0]", "x[1]", "coverage"]
    assert axes[0].get_xlabel() == "normalised rank"
    assert axes[-1].get_xlabel() == "credible level"
    assert len(axes[0].collections) >= 1  # the simultaneous band
    plt.close(fig)
    fig = exact.plot(site="x", max_panels=1)
    assert [ax.get_title() for ax in fig.get_axes()] == ["x[0]", "coverage"]
    plt.close(fig)
    with pytest.raises(ValueError, match="site"):
        exact.plot(site="z")


def test_coverage_of_perfectly_uniform_ranks_is_exact():
    """Ranks 0..L once each: the randomised-quantile coverage equals every level exactly."""
    ranks = torch.arange(100).reshape(100, 1).repeat(1, 3)
    cal = Calibration({"x": ranks}, num_samples=99, method="test")
    levels = np.linspace(0, 1, 11)
    coverage = cal.expected_coverage(levels)
    np.testing.assert_allclose(coverage["mean"].to_numpy(), levels, atol=1e-12)
    assert cal.passed()
    with pytest.raises(ValueError, match="ranks"):
        Calibration({"x": ranks + 1}, num_samples=99, method="test")


def test_ecdf_uniformity_test_is_exact_under_uniformity():
    """Uniform ranks give p-values with P(p <= a) <= a (discrete, so at most a): checked at
    a = 0.05 over 4000 coordinates within 4 binomial sds; U-shaped ranks get p ~ 0."""
    rng = np.random.default_rng(0)
    ranks = rng.integers(0, 10, size=(50, 4000))
    _, p_value = ecdf_uniformity_test(ranks, 9)
    assert (p_value <= 0.05).mean() < 0.05 + _tolerance(0.05, 4000)
    assert (p_value <= 0.5).mean() == pytest.approx(0.5, abs=_tolerance(0.5, 4000))
    extremes = rng.choice([0, 1, 8, 9], size=(50, 1))
    assert ecdf_uniformity_test(extremes, 9)[1][0] < 1e-6


def test_errors_name_the_argument():
    kwargs = dict(observed=["y"], progress=False)
    method = ConjugateNormal(TASK)
    with pytest.raises(ValueError, match="num_simulations"):
        calibration(TASK.model, method, num_simulations=1, **kwargs)
    with pytest.raises(ValueError, match="num_samples"):
        calibration(TASK.model, method, num_samples=0, **kwargs)
    with pytest.raises(ValueError, match="sites"):
        calibration(TASK.model, method, sites=["z"], **kwargs)
    with pytest.raises(ValueError, match="sites"):
        calibration(TASK.model, method, sites=["y"], **kwargs)
    with pytest.raises(ValueError, match="observed"):
        calibration(TASK.model, method, observed=["z"], progress=False)
    with pytest.raises(ValueError, match="observed"):
        calibration(TASK.model, method, progress=False)  # nothing observed by the model
    with pytest.raises(ValueError, match="option"):
        calibration(TASK.model, "importance", bogus=1, **kwargs)
