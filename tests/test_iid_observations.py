"""Path methods on models with iid observations in a plate, against exact posteriors, on the VP
and the rectified (flow-matching) path.

The model is x ~ p(x), y_i | x ~ N(x, s^2 I) for i = 1..n in a ``pyro.plate``. The mean ybar is
sufficient: the posterior is that of one observation ybar ~ N(x, s^2 / n I), in closed form for
a Gaussian-mixture prior (``GaussianMixtureInverseProblem.posterior``).
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import condgen
from condgen.evaluate import GaussianMixtureInverseProblem
from condgen.methods import PiGDM
from condgen.priors import (
    FlowMatchingPrior,
    GaussianMixturePrior,
    RectifiedSchedule,
    VPSchedule,
)

# Append a method's name here and every test below that loops over methods covers it.
PATH_METHODS = ["smc", "tds", "dps", "pigdm", "langevin"]
PATHS = ["vp", "rectified", "flow-matching"]


NUM_OBS, NOISE = 5, 1.0
COVARIANCE = 0.25 * torch.eye(2).expand(3, 2, 2)
MEANS = torch.tensor([[-2.0, 0.0], [2.0, 0.5], [0.0, 2.5]])


def _observations(mean: tuple[float, float]) -> torch.Tensor:
    """Five fixed observations, shaped [5, 2], centred so that their mean is exactly ``mean``."""
    z = torch.randn(NUM_OBS, 2, generator=torch.Generator().manual_seed(0))
    return torch.tensor(mean) + NOISE * (z - z.mean(0))


def _model(prior):
    def model():
        x = pyro.sample("x", prior)
        with pyro.plate("obs", NUM_OBS):
            pyro.sample("y", dist.Normal(x, NOISE).to_event(1))

    return model


def _schedule(path: str):
    return VPSchedule() if path == "vp" else RectifiedSchedule()


def _mixture(path: str) -> GaussianMixturePrior:
    """Three components N(m_k, 0.25 I) of equal weight."""
    return GaussianMixturePrior(torch.ones(3), MEANS, COVARIANCE, schedule=_schedule(path))


def _flow_matching(mixture: GaussianMixturePrior) -> FlowMatchingPrior:
    """A flow-matching prior whose velocity network is the mixture's exact velocity
    v = (x_t - D(x_t, t)) / t (the inverse of D = x_t - t v)."""

    def velocity(x_t, t):
        return (x_t - mixture.denoise(x_t, t)) / t.unsqueeze(-1)

    return FlowMatchingPrior(velocity, event_shape=(2,))


def _exact_posterior(prior: GaussianMixturePrior, y: torch.Tensor) -> GaussianMixturePrior:
    """The posterior of the plate model, through the sufficient statistic ybar."""
    task = GaussianMixtureInverseProblem(
        prior=prior, operator=torch.eye(2), noise=NOISE / math.sqrt(NUM_OBS)
    )
    task.data = {"y": y.mean(0)}
    return task.posterior()["x"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("method", PATH_METHODS)
def test_path_methods_accept_iid_observations_in_a_plate(method, path):
    """Every path method conditions on five iid observations in a plate, on the VP path, the
    rectified path (alpha_1 = 0) and a flow-matching prior, and returns finite draws of the
    site's shape."""
    prior = _mixture(path)
    if path == "flow-matching":
        prior = _flow_matching(prior)
    y = _observations((0.0, 0.25))
    post = condgen.condition(
        _model(prior), {"y": y}, method=method, steps=20, num_samples=64, seed=0, progress=False
    )
    x = post.flatten()["x"]  # SMC methods: four runs of 16 particles
    assert x.shape == (64, 2) and torch.isfinite(x).all()


def _mixture_moments(mixture: GaussianMixturePrior) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact mean and sd of a mixture, per coordinate (float64)."""
    w, m = mixture.weights.double(), mixture.means.double()
    variances = mixture.covs.double().diagonal(dim1=-2, dim2=-1)
    mean = w @ m
    return mean, (w @ (variances + m**2) - mean**2).sqrt()


@pytest.mark.parametrize("path", ["vp", "rectified"])
@pytest.mark.parametrize("method", ["smc", "tds"])
def test_smc_methods_match_a_trimodal_mixture_posterior(method, path):
    """With ybar between two components the posterior keeps three modes (masses 0.43, 0.43,
    0.14; each of sd 1/3). A run's mass of mode k is its weighted mean of the exact posterior
    responsibility p(k | x), whose posterior expectation is exactly the mode's weight.

    Tolerance: over 8 independent runs of 1000 weighted particles, the averages of the weighted
    mean, sd and masses lie within 4 standard errors of the exact values, the standard error
    being the spread of the runs over sqrt(8) (resampling correlates the particles, so neither
    their number nor the ESS gives it), plus a stated allowance for the 100-step path and the
    finite particle number: 0.05 posterior sd for moments, 0.02 for masses. Measured over 40
    runs of 2000 particles, the biases are up to 0.036 sd and 0.016 in mass on the VP path
    (3 standard errors), 0.03 sd and 0.01 on the rectified path."""
    prior = _mixture(path)
    y = _observations((0.0, 0.25))
    exact = _exact_posterior(prior, y)
    assert exact.weights.min() > 0.1  # three modes of mass
    exact_mean, exact_sd = _mixture_moments(exact)
    means, sds, masses = [], [], []
    for seed in range(8):
        post = condgen.condition(
            _model(prior), {"y": y}, method=method, num_samples=1000, seed=seed, progress=False
        )
        mean, sd = post.moments("x")
        weights = post.log_weights.flatten().double().softmax(0)
        responsibilities = exact.component_log_probs(post.flatten()["x"], 0.0).exp().double()
        means.append(mean)
        sds.append(sd)
        masses.append(weights @ responsibilities)
    for runs, value, allowance in [
        (means, exact_mean, 0.05 * exact_sd),
        (sds, exact_sd, 0.05 * exact_sd),
        (masses, exact.weights.double(), 0.02),
    ]:
        runs = torch.stack(runs)
        se = runs.std(0) / math.sqrt(len(runs))
        assert ((runs.mean(0) - value).abs() < 4 * se + allowance).all(), (runs.mean(0), value)


def _gaussian(path: str) -> GaussianMixturePrior:
    """N(m, I): PiGDM's Gaussian approximation of p(x0 | x_t) is exact for it."""
    return GaussianMixturePrior(
        torch.ones(1), torch.tensor([[1.0, -1.0]]), torch.eye(2)[None], schedule=_schedule(path)
    )


def _conjugate_posterior(m: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
    """x ~ N(m, I), y_i ~ N(x, s^2 I): precision 1 + n / s^2, mean (m + sum_i y_i / s^2) /
    precision; returns the mean and the sd."""
    precision = 1 + len(y) / NOISE**2
    return (m + y.sum(0) / NOISE**2) / precision, precision**-0.5


@pytest.mark.parametrize("path", ["rectified", "vp"])
@pytest.mark.parametrize("t", [1.0, 1 - 1e-4, 0.5, 0.01])
def test_pigdm_guided_denoiser_is_the_exact_posterior_denoiser_for_a_unit_gaussian(path, t):
    """For N(m, I) PiGDM's guided denoiser is E[x0 | x_t, y] in closed form at every t: with
    x_t = alpha x0 + sigma eps, the precision is 1 + alpha^2 / sigma^2 + n / s^2 and the mean
    (m + alpha x_t / sigma^2 + sum_i y_i / s^2) / precision. At t = 1 and 1 - 1e-4 on the
    rectified path (alpha <= 1e-3 sigma) this checks the limit form of the correction."""
    prior = _gaussian(path)
    y = _observations((0.5, 0.5))
    method = PiGDM()
    setup = method.setup(condgen.Problem(_model(prior), {"y": y}))
    x_t = 2 * torch.randn(50, 2, generator=torch.Generator().manual_seed(2))
    t = torch.tensor(t)
    alpha, sigma = prior.schedule(t)
    precision = 1 + alpha**2 / sigma**2 + NUM_OBS / NOISE**2
    exact = (prior.means[0] + alpha * x_t / sigma**2 + y.sum(0) / NOISE**2) / precision
    torch.testing.assert_close(method.guided_denoise(setup, x_t, t), exact, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("path", "allowance"), [("rectified", 0.03), ("vp", 0.05)])
def test_pigdm_samples_the_conjugate_posterior_of_a_unit_gaussian(path, allowance):
    """PiGDM with 200 steps on N(m, I) and five iid observations: the draws' mean and sd match
    the conjugate posterior within 4 Monte Carlo standard errors (sd / sqrt(n) for the mean,
    sd / sqrt(2 n) for the sd) plus a stated allowance of ``allowance`` posterior sd for the
    path discretisation. Measured with 100,000 draws: the ancestral sampler under-disperses by
    2% of the sd on the rectified path and 4% on the VP path at 200 steps (7% and 13% at 50
    steps: it falls like 1 / steps), with no mean bias beyond 0.005 sd. On the rectified path
    the first step, at alpha_1 = 0, used to raise a FloatingPointError."""
    prior = _gaussian(path)
    y = _observations((0.5, 0.5))
    exact_mean, exact_sd = _conjugate_posterior(prior.means[0], y)
    n = 4000
    post = condgen.condition(
        _model(prior),
        {"y": y},
        method="pigdm",
        steps=200,
        num_samples=n,
        batch_size=n,
        seed=0,
        progress=False,
    )
    mean, sd = post.moments("x")
    print(f"{path}: mean {mean.tolist()} vs {exact_mean.tolist()}, sd {sd.tolist()} vs {exact_sd}")
    assert ((mean - exact_mean).abs() < exact_sd * (4 / math.sqrt(n) + allowance)).all()
    assert ((sd - exact_sd).abs() < exact_sd * (4 / math.sqrt(2 * n) + allowance)).all()


# ------------------------------------------------------------- the neural site inside a plate

ITEM_DATA = torch.tensor([[-1.5, 0.0], [1.0, 1.0], [0.5, 2.0]])  # one observation per item


def _items_model(prior):
    """Three independent items, x_i ~ p(x) and y_i | x_i ~ N(x_i, s^2 I), in a plate: the
    neural site itself is batched by the plate."""

    def model():
        with pyro.plate("items", len(ITEM_DATA)):
            x = pyro.sample("x", prior)
            pyro.sample("y", dist.Normal(x, NOISE).to_event(1))

    return model


@pytest.mark.parametrize("method", PATH_METHODS)
def test_path_methods_condition_a_neural_site_inside_a_plate(method):
    """Every path method takes a path prior batched by a plate (smc used to fail there with a
    shape error: its twist was built for one event, not the plate's three) and returns finite
    draws shaped [items, event]."""
    post = condgen.condition(
        _items_model(_mixture("vp")),
        {"y": ITEM_DATA},
        method=method,
        steps=20,
        num_samples=64,
        seed=0,
        progress=False,
    )
    x = post.flatten()["x"]
    assert x.shape[1:] == (3, 2) and torch.isfinite(x).all()


@pytest.mark.parametrize("method", ["smc", "tds"])
def test_smc_inside_a_plate_matches_each_items_exact_posterior(method):
    """The posterior of the plate model factorises: item i's is the mixture posterior given
    y_i alone (closed form). Over 6 runs of 1000 joint particles, the runs' average posterior
    mean and sd of every item lie within 4 standard errors (the runs' spread over sqrt(6)) of
    the exact values, plus 0.05 posterior sd for the 100-step path (as in the trimodal test
    above). The twist only shapes the proposal (moments in the wrong order measured still
    pass: a wrong twist costs efficiency, not correctness), so this checks what must be right
    whatever the twist: the joint weights of the plate's items and their likelihoods."""
    prior = _mixture("vp")
    exact = []
    for y in ITEM_DATA:
        task = GaussianMixtureInverseProblem(prior=prior, operator=torch.eye(2), noise=NOISE)
        task.data = {"y": y}
        exact.append(_mixture_moments(task.posterior()["x"]))
    exact_mean = torch.stack([m for m, _ in exact])
    exact_sd = torch.stack([s for _, s in exact])
    means, sds = [], []
    for seed in range(6):
        post = condgen.condition(
            _items_model(prior),
            {"y": ITEM_DATA},
            method=method,
            num_samples=1000,
            seed=seed,
            progress=False,
        )
        mean, sd = post.moments("x")
        means.append(mean)
        sds.append(sd)
    for runs, value in [(means, exact_mean), (sds, exact_sd)]:
        runs = torch.stack(runs).double()
        se = runs.std(0) / math.sqrt(len(runs))
        assert ((runs.mean(0) - value).abs() < 4 * se + 0.05 * exact_sd).all(), (
            runs.mean(0),
            value,
        )
