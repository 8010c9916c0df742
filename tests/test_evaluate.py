"""Tests of condgen.evaluate: tasks against independent closed forms, metrics, compare."""

import math

import pytest
import torch

import condgen
from condgen.evaluate import (
    BayesianLinearRegression,
    BetaBinomial,
    NormalNormal,
    posterior_metrics,
    sliced_wasserstein,
)
from condgen.posterior import Posterior


def test_sliced_wasserstein_matches_gaussian_shift():
    """Between N(0, I) and N(m, I), SW_2^2 = E[(theta . m)^2] = |m|^2 / d exactly."""
    torch.manual_seed(0)
    d, n = 4, 20_000
    m = torch.tensor([1.0, -2.0, 0.5, 0.0])
    x, y = torch.randn(n, d), torch.randn(n, d) + m
    sw = sliced_wasserstein(x, y, num_projections=2000)
    expected = (m.norm() ** 2 / d).sqrt()
    # Sorting-based 1-D W2 between samples has O(n^-1/2) error; 2000 directions ~2% MC error.
    assert sw == pytest.approx(expected.item(), rel=0.05)
    same = sliced_wasserstein(x, torch.randn(n, d))
    assert same < 0.05
    with pytest.raises(ValueError, match="dimensions"):
        sliced_wasserstein(x, torch.randn(n, d + 1))


def test_sliced_wasserstein_unequal_sizes():
    """Quantile matching handles different sample sizes: N(0,1) vs N(3,1) in 1-D is 3."""
    torch.manual_seed(1)
    sw = sliced_wasserstein(torch.randn(5000), torch.randn(3000) + 3.0)
    assert sw == pytest.approx(3.0, abs=0.1)


def test_normal_normal_posterior_by_bayes_rule():
    """The closed-form posterior equals a grid evaluation of prior x likelihood (1-D)."""
    task = NormalNormal(dim=1, num_obs=5)
    grid = torch.linspace(-6, 6, 20001, dtype=torch.float64)
    y = task.data["y"].double()[:, 0]
    log_post = torch.distributions.Normal(0.0, task.prior_scale).log_prob(grid)
    log_post = log_post + torch.distributions.Normal(grid[:, None], task.noise).log_prob(y).sum(1)
    w = torch.softmax(log_post, 0)
    mean = (w * grid).sum()
    sd = (w * (grid - mean) ** 2).sum().sqrt()
    exact = task.posterior()["x"].base_dist
    assert exact.loc.item() == pytest.approx(mean.item(), abs=1e-4)
    assert exact.scale.item() == pytest.approx(sd.item(), abs=1e-4)


def test_linear_regression_posterior_solves_normal_equations():
    """The posterior mean is the ridge solution and the covariance its inverse Hessian."""
    task = BayesianLinearRegression(dim=3, num_obs=40)
    X, y = task.features.double(), task.data["y"].double()
    lam = task.noise**2 / task.prior_scale**2
    ridge = torch.linalg.solve(X.T @ X + lam * torch.eye(3, dtype=X.dtype), X.T @ y)
    post = task.posterior()["w"]
    torch.testing.assert_close(post.mean.double(), ridge, atol=1e-4, rtol=1e-4)


def test_beta_binomial_posterior_by_bayes_rule():
    task = BetaBinomial(a=2.0, b=3.0, num_trials=20, successes=7)
    grid = torch.linspace(1e-6, 1 - 1e-6, 200001, dtype=torch.float64)
    log_post = torch.distributions.Beta(2.0, 3.0).log_prob(grid) + 7 * grid.log()
    log_post = log_post + 13 * (1 - grid).log()
    w = torch.softmax(log_post, 0)
    assert task.posterior()["p"].mean.item() == pytest.approx((w * grid).sum().item(), abs=1e-5)
    with pytest.raises(ValueError, match="successes"):
        BetaBinomial(num_trials=3, successes=5)


def test_posterior_metrics_on_exact_draws():
    """Exact draws score mean_err ~ N(0,1)/sqrt(n) and sd_ratio ~ 1 within MC error."""
    task = BayesianLinearRegression()
    problem = condgen.Problem(task.model, task.data)
    n = 4000
    draws = task.reference_samples(n, seed=1)
    post = Posterior(problem, {k: v.reshape(4, n // 4, *v.shape[1:]) for k, v in draws.items()})
    metrics = posterior_metrics(post, task.reference_samples(20_000, seed=2))
    # worst of 3 standardised mean errors, each with sd ~ sqrt(1/n + 1/20000)
    assert metrics["mean_err"] < 4 * math.sqrt(1 / n + 1 / 20_000)
    assert metrics["sd_ratio"] == pytest.approx(1.0, abs=4 / math.sqrt(2 * n))
    assert metrics["rhat"] < 1.01
    assert metrics["ess"] > 0.5 * n
    shifted = {k: v + 1.0 for k, v in post.samples.items()}
    bad = posterior_metrics(Posterior(problem, shifted), task.reference_samples(20_000))
    assert bad["mean_err"] > 1.0 and bad["sw"] > metrics["sw"]
    with pytest.raises(ValueError, match="reference"):
        posterior_metrics(post, {"other": torch.zeros(10)})


def test_compare_report_rows_and_markdown():
    task = NormalNormal(dim=1)
    report = condgen.compare(
        task.model,
        task.data,
        methods={"is-prior": condgen.methods.Importance(proposal="prior"), "svi": "svi"},
        reference=task.reference_samples(5000),
        num_samples=2000,
        progress=False,
        title="t",
    )
    assert list(report.table["method"]) == ["is-prior", "svi"]
    assert set(report.posteriors) == {"is-prior", "svi"}
    assert (report.table["mean_err"] < 0.5).all()
    markdown = report.to_markdown()
    assert markdown.startswith("| method | family |") and "is-prior" in markdown
    assert str(report).splitlines()[0] == "t"
