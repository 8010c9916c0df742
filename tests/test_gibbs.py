"""Particle Gibbs (``method="gibbs"``) on a neural prior beside a classical unknown, against the
exact joint posterior of a Gaussian-mixture prior with an unknown noise scale.

Model: s ~ HalfNormal(1), x ~ sum_k w_k N(m_k, c_k I) in R^2, y_i | x, s ~ N(x, s^2 I) for
i = 1..5. Given s, ybar is sufficient for x and p(y | s) = sum_k w_k N(ybar; m_k, (c_k + s^2 / n)
I) (2 pi s^2)^(-(n-1) d / 2) n^(-d / 2) exp(-SS / (2 s^2)) with SS = sum_i |y_i - ybar|^2, so
p(s | y) is exact on a fine grid, and x | s, y is a mixture in closed form.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import condgen
from condgen.evaluate import sliced_wasserstein
from condgen.priors import GaussianMixturePrior

WEIGHTS = torch.tensor([0.5, 0.3, 0.2])
MEANS = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, 3.0]])
VARIANCES = torch.tensor([0.5, 0.3, 0.4])
Y = torch.tensor([[0.9, 1.2], [1.8, 0.3], [-0.2, 1.9], [1.1, 0.2], [0.4, 1.4]])
PRIOR = GaussianMixturePrior(WEIGHTS, MEANS, VARIANCES[:, None, None] * torch.eye(2))


def model():
    s = pyro.sample("s", dist.HalfNormal(1.0))
    x = pyro.sample("x", PRIOR)
    with pyro.plate("obs", len(Y)):
        pyro.sample("y", dist.Normal(x, s.unsqueeze(-1)).to_event(1))


def _log_marginal(s: torch.Tensor) -> torch.Tensor:
    """log p(y | s) for a batch of s (float64)."""
    n, d = Y.shape
    y, ybar = Y.double(), Y.double().mean(0)
    v = VARIANCES.double() + s[:, None] ** 2 / n  # [S, K]
    square = (ybar - MEANS.double()).pow(2).sum(-1)  # [K]
    components = WEIGHTS.double().log() - 0.5 * (square / v + d * (2 * math.pi * v).log())
    spread = (y - ybar).pow(2).sum()
    within = -0.5 * (n - 1) * d * (2 * math.pi * s**2).log() - 0.5 * d * math.log(n)
    return components.logsumexp(-1) + within - spread / (2 * s**2)


def exact_draws(num: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The exact posterior mean and sd of s (on a grid of 20000 points), and ``num`` exact joint
    draws of x (s from the grid, then x from its mixture posterior)."""
    grid = torch.linspace(1e-3, 6.0, 20_000, dtype=torch.float64)
    log_post = dist.HalfNormal(1.0).log_prob(grid) + _log_marginal(grid)
    p = log_post.softmax(0)
    mean = (p * grid).sum()
    sd = ((p * (grid - mean) ** 2).sum()).sqrt()
    generator = torch.Generator().manual_seed(seed)
    s = grid[torch.multinomial(p, num, replacement=True, generator=generator)]
    n = len(Y)
    v = s[:, None] ** 2 / n  # [num, 1]
    c = VARIANCES.double()
    ybar = Y.double().mean(0)
    log_w = WEIGHTS.double().log() - 0.5 * (
        (ybar - MEANS.double()).pow(2).sum(-1) / (c + v) + 2 * (c + v).log()
    )
    k = torch.multinomial(log_w.softmax(-1), 1, generator=generator).squeeze(-1)
    var = 1 / (1 / c[k] + 1 / v[:, 0])  # [num]
    loc = var[:, None] * (MEANS.double()[k] / c[k, None] + ybar / v)
    x = loc + var.sqrt()[:, None] * torch.randn(num, 2, generator=generator, dtype=torch.float64)
    return mean, sd, x.float()


def test_exact_reference_is_self_consistent():
    """The grid posterior of s and the joint draws agree: two sets of exact draws are close
    (SW at the two-sample floor) and the posterior is not the prior (a real test case)."""
    mean, sd, x = exact_draws(4000, seed=0)
    _, _, x2 = exact_draws(4000, seed=1)
    assert float(sliced_wasserstein(x, x2, 256)) < 0.08
    assert 0.4 < float(mean) < 1.5 and float(sd) < 0.5  # HalfNormal(1): mean 0.80, sd 0.60


@pytest.mark.parametrize("kernel", ["nuts"])
def test_gibbs_matches_the_exact_joint_posterior(kernel):
    """Tolerances (the issue's acceptance figures): the noise scale's mean within 0.25 posterior
    sd and its sd within 20%; the neural site's draws within 0.25 sliced Wasserstein of the
    two-sample floor. With 2 chains of 300 draws and an ESS of s above 100 (checked; measured
    145), the Monte Carlo standard error of the mean is below 0.1 sd and that of the sd below
    7%, so both tolerances are 2.5 standard errors or more."""
    post = condgen.condition(
        model,
        {"y": Y},
        method="gibbs",
        kernel=kernel,
        num_chains=2,
        warmup_steps=60,
        num_particles=32,
        steps=20,
        num_samples=600,
        seed=0,
        progress=False,
    )
    assert post.samples["s"].shape == (2, 300) and post.samples["x"].shape == (2, 300, 2)
    exact_mean, exact_sd, exact_x = exact_draws(600, seed=2)
    s = post.samples["s"].double().flatten()
    assert abs(float(s.mean() - exact_mean)) < 0.25 * float(exact_sd), (s.mean(), exact_mean)
    assert abs(float(s.std() / exact_sd) - 1) < 0.2, (s.std(), exact_sd)
    summary = post.summary()
    assert summary.loc["s", "ess_bulk"] > 100 and summary.loc["s", "r_hat"] < 1.05
    _, _, floor_x = exact_draws(600, seed=3)
    floor = float(sliced_wasserstein(floor_x, exact_x, 1024))
    sw = float(sliced_wasserstein(post.flatten()["x"], exact_x, 1024))
    assert sw < floor + 0.25, (sw, floor)
    assert 0.2 < post.stats["path_update_rate"] <= 1.0
    assert post.to_arviz().posterior["s"].shape == (2, 300)


def test_gibbs_refuses_a_model_without_a_path_prior():
    def plain():
        s = pyro.sample("s", dist.HalfNormal(1.0))
        pyro.sample("y", dist.Normal(0.0, s))

    with pytest.raises(ValueError, match=r"path prior.*'nuts'"):
        condgen.condition(plain, {"y": torch.tensor(0.3)}, method="gibbs", progress=False)


def test_path_methods_name_gibbs_for_classical_sites():
    with pytest.raises(ValueError, match=r"\['s'\].*'gibbs'"):
        condgen.condition(model, {"y": Y}, method="smc", progress=False)
