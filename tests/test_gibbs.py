"""Particle Gibbs (``method="gibbs"``) on a neural prior beside a classical unknown, against the
exact joint posterior of a Gaussian-mixture prior with an unknown noise scale
(``condgen.evaluate.UnknownNoiseMixture``: s ~ HalfNormal(1), x ~ a 3-component mixture in R^2,
y_i | x, s ~ N(x, s^2 I) for i = 1..5; p(s | y) exact on a grid, x | s, y in closed form).
"""

import pyro
import pyro.distributions as dist
import pytest
import torch

import condgen
from condgen.evaluate import GaussianMixtureInverseProblem, UnknownNoiseMixture, sliced_wasserstein

TASK = UnknownNoiseMixture.default()
model, Y = TASK.model, TASK.y


def exact_draws(num: int, seed: int) -> tuple[float, float, torch.Tensor]:
    """The exact posterior mean and sd of s and ``num`` exact joint draws of x."""
    return (*TASK.noise_moments(), TASK.reference_samples(num, seed)["x"])


def test_exact_reference_is_self_consistent():
    """Two sets of exact draws are close (SW at the two-sample floor), the posterior is not the
    prior (a real test case), and the grid moments of s match a direct quadrature of
    p(s) p(y | s) computed here independently by brute force on a grid of x and s."""
    mean, sd, x = exact_draws(4000, seed=0)
    _, _, x2 = exact_draws(4000, seed=1)
    assert float(sliced_wasserstein(x, x2, 256)) < 0.08
    assert 0.4 < float(mean) < 1.5 and float(sd) < 0.5  # HalfNormal(1): mean 0.80, sd 0.60
    s = torch.linspace(0.05, 4.0, 400, dtype=torch.float64)
    axis = torch.linspace(-6.0, 8.0, 141, dtype=torch.float64)
    x_grid = torch.cartesian_prod(axis, axis)  # [G, 2], cells of 0.1 x 0.1
    log_prior_x = TASK.prior.mixture().log_prob(x_grid.float()).double()
    log_evidence = torch.stack(
        [
            (
                log_prior_x + dist.Normal(x_grid[:, None], v).log_prob(Y.double()).sum((-1, -2))
            ).logsumexp(0)
            for v in s
        ]
    )
    p = (dist.HalfNormal(1.0).log_prob(s) + log_evidence).softmax(0)
    assert abs(float((p * s).sum()) - float(mean)) < 0.01


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
        condgen.condition(model, {"y": Y}, method="tds", progress=False)


def test_smc_tempers_a_mixture_prior_beside_classical_sites():
    """Every site of this model has an exact log-density, so ``smc`` is tempered SMC there:
    the noise scale's mean within 0.25 posterior sd and its sd within 20%, and the neural
    site's draws within 0.25 sliced Wasserstein of the two-sample floor (the tolerances of the
    gibbs test above; 2000 particles, measured: -0.012 sd, -0.7%, SW 0.041 at floor
    0.027)."""
    post = condgen.condition(model, {"y": Y}, method="smc", num_samples=2000, seed=0,
                             progress=False)  # fmt: skip
    assert post.method == "smc" and "temperatures" in post.stats
    exact_mean, exact_sd, exact_x = exact_draws(2000, seed=2)
    mean, sd = (float(v) for v in post.moments("s"))
    assert abs(mean - exact_mean) < 0.25 * exact_sd, (mean, exact_mean)
    assert abs(sd / exact_sd - 1) < 0.2, (sd, exact_sd)
    _, _, floor_x = exact_draws(2000, seed=3)
    floor = float(sliced_wasserstein(floor_x, exact_x, 1024))
    sw = float(sliced_wasserstein(post.resample(2000).flatten()["x"], exact_x, 1024))
    assert sw < floor + 0.25, (sw, floor)


def test_gibbs_refuses_a_model_with_the_neural_site_alone():
    """With no classical site there is nothing for NUTS to update: a clear error naming 'smc',
    not a traceback from inside Pyro's integrator."""
    task = GaussianMixtureInverseProblem.circle(seed=0)
    with pytest.raises(ValueError, match=r"'x'.*method='smc'"):
        condgen.condition(task.model, task.data, method="gibbs", progress=False)
