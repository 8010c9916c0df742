"""Bayesian methods on models whose prior is a condgen prior, against exact mixture posteriors."""

import math

import arviz as az
import pytest
import torch

import condgen
from condgen.evaluate import GaussianMixtureInverseProblem


def _weighted_moments(post):
    return post.moments("x")


def test_problem_marks_the_neural_site():
    task = GaussianMixtureInverseProblem.circle()
    problem = condgen.Problem(task.model, task.data)
    assert problem.latent_sites["x"].neural
    assert not problem.observed_sites["y"].neural


def test_nuts_on_a_mixture_prior_matches_the_exact_posterior():
    """With A = I the posterior is (nearly) one mixture component: NUTS mixes and its mean
    and sd match the closed-form mixture posterior within 4 Monte Carlo standard errors."""
    task = GaussianMixtureInverseProblem.circle(operator=torch.eye(2), noise=0.5, seed=3)
    exact = task.posterior()["x"]
    post = condgen.condition(
        task.model,
        task.data,
        method=condgen.methods.NUTS(num_chains=2, warmup_steps=300),
        num_samples=1000,
        seed=0,
        progress=False,
    )
    ref = exact.sample((200_000,))
    mean, sd = _weighted_moments(post)
    ess = torch.as_tensor(az.ess(post.to_arviz())["x"].values)
    assert (ess > 100).all()
    assert ((mean - ref.mean(0).double()).abs() < 4 * ref.std(0) / ess.sqrt()).all()
    assert ((sd - ref.std(0).double()).abs() < 4 * ref.std(0) / (2 * ess).sqrt() + 0.02).all()


def test_importance_recovers_a_bimodal_posterior_where_nuts_chains_stick():
    """Observing one coordinate leaves two modes of equal weight. Importance sampling from the
    prior recovers the weighted moments; NUTS chains stay in their modes, and R-hat says so."""
    task = GaussianMixtureInverseProblem.circle(seed=0)
    exact = task.posterior()["x"]
    assert exact.weights.max() < 0.6  # two comparable modes
    ref = exact.sample((200_000,))
    post = condgen.condition(
        task.model, task.data, method="importance", proposal="prior", num_samples=20_000, seed=0
    )
    mean, sd = _weighted_moments(post)
    ess = post.stats["ess"]
    assert ((mean - ref.mean(0).double()).abs() < 4 * ref.std(0) / math.sqrt(ess)).all()
    assert ((sd - ref.std(0).double()).abs() < 4 * ref.std(0) / math.sqrt(2 * ess)).all()

    nuts = condgen.condition(
        task.model,
        task.data,
        method=condgen.methods.NUTS(num_chains=4, warmup_steps=200),
        num_samples=800,
        seed=1,
        progress=False,
    )
    rhat = float(az.rhat(nuts.to_arviz())["x"].max())
    # the four chains start in random modes: with 4 chains the chance that all pick the same
    # one of two equal modes is 1/8, so this fixed seed is checked, not assumed
    assert rhat > 1.1


@pytest.mark.parametrize("method", ["svi", "importance"])
def test_methods_on_a_mixture_prior_match_the_exact_posterior(method):
    """With A = I, noise 0.5 and seed 3 the exact posterior is one mixture component (weight
    1 - 1e-7): Gaussian, mean (2.217, 2.032), sd 0.354 per coordinate (200,000 exact draws).

    Tolerances from the Monte Carlo error of n = 2000 draws. Importance sampling (a guide
    fitted for 500 steps as proposal): the self-normalised mean has standard error
    sd / sqrt(ESS) and the sd about sd / sqrt(2 ESS) (Gaussian), with the weights' ESS from
    stats; 4.5 standard errors bound a false failure by about 1e-5 per coordinate. Measured on
    seeds 0-3: ESS 1759-1802, mean errors 0.3-0.9 standard errors. SVI's draws are independent
    draws of the guide, standard errors sd / sqrt(n) and sd / sqrt(2 n), plus the guide's own
    error: the family holds the exact posterior, but 500 steps do not reach it, its mean was
    8-14 standard errors (0.18-0.31 sd) short on seeds 0-3, so 0.4 sd is allowed on top (at
    200 steps it was 3 sd short and sd 0.6 of the exact, as was importance's proposal with ESS
    2-19: the run sizes here are the smallest that pass for the right reason)."""
    task = GaussianMixtureInverseProblem.circle(operator=torch.eye(2), seed=3)
    exact = task.posterior()["x"]
    assert exact.weights.max() > 1 - 1e-6
    ref = exact.sample((200_000,))
    m, s = ref.mean(0).double(), ref.std(0).double()
    num_samples = 2000
    post = condgen.condition(
        task.model,
        task.data,
        method=method,
        num_steps=500,
        num_samples=num_samples,
        seed=0,
        progress=False,
    )
    mean, sd = _weighted_moments(post)
    n = post.stats["ess"] if method == "importance" else num_samples
    bias = 0.4 * s if method == "svi" else 0.0
    assert ((mean - m).abs() < 4.5 * s / math.sqrt(n) + bias).all(), (mean, m)
    assert ((sd - s).abs() < 4.5 * s / math.sqrt(2 * n) + bias).all(), (sd, s)
    assert "log_likelihood" in post.to_arviz().groups()


def test_nuts_runs_on_a_path_prior_through_its_ode_likelihood():
    """NUTS on a DiffusionPrior uses the probability-flow ODE log-density (slow: one adaptive
    ODE solve with an adjoint per gradient). A short run moves, stays finite, and lands near
    the exact posterior mean (within 4 posterior sds: a smoke test, not a precision test)."""
    import pyro
    import pyro.distributions as dist

    from condgen.priors import DiffusionPrior, GaussianMixturePrior

    exact = GaussianMixturePrior(
        torch.ones(1), torch.tensor([[1.0, -1.0]]), 0.5 * torch.eye(2)[None]
    )
    prior = DiffusionPrior(exact.denoise, schedule=exact.schedule, event_shape=(2,), steps=16)

    def model():
        x = pyro.sample("x", prior)
        pyro.sample("y", dist.Normal(x, 0.5).to_event(1))

    post = condgen.condition(
        model,
        {"y": torch.tensor([0.5, 0.0])},
        method=condgen.methods.NUTS(num_chains=1, warmup_steps=10, max_tree_depth=3),
        num_samples=10,
        seed=0,
        progress=False,
    )
    x = post.flatten()["x"]
    # conjugate update: precision 1/0.5 + 1/0.25 = 6, mean (2 m + 4 y) / 6
    mean = (2 * torch.tensor([1.0, -1.0]) + 4 * torch.tensor([0.5, 0.0])) / 6
    assert torch.isfinite(x).all() and len(torch.unique(x[:, 0])) > 1
    assert ((x.mean(0) - mean).abs() < 4 * (1 / 6) ** 0.5).all()
