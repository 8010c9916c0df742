"""Tests of sequential rounds for one observation (truncated sequential estimation, Deistler et
al. 2022): ``fit(num_simulations, rounds=R, x_o=...)`` of condgen.amortized estimators and
``TruncatedPrior``, against closed-form posteriors and exact (rejection) truncated priors."""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

import condgen
from condgen.amortized import FMPE, NPE, NPSE, TruncatedPrior
from condgen.amortized.sequential import round_sizes
from condgen.conditioning import seeded

SIGMA = 0.02
X_O = torch.tensor([0.8, -0.5])
#: The exact posterior of ``model`` at X_O: N(MEAN, SD^2 I).
VARIANCE = 1 / (1 + 1 / SIGMA**2)
MEAN, SD = VARIANCE * X_O / SIGMA**2, math.sqrt(VARIANCE)
SMALL_FLOW = {"flow": "maf", "transforms": 2, "hidden_features": [32, 32]}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class CountingNormal(dist.Normal):
    """A normal distribution that counts the values it draws (the simulations of ``x``); an
    observed (conditioned) site draws none."""

    drawn = 0

    def rsample(self, sample_shape=()):
        CountingNormal.drawn += torch.Size(sample_shape).numel() * self.batch_shape.numel() // 2
        return super().rsample(sample_shape)


def model():
    """theta ~ N(0, I_2), x ~ N(theta, 0.02^2 I_2): a posterior 50 times narrower than the
    prior, N(x / (1 + 0.02^2), 0.02^2 / (1 + 0.02^2) I)."""
    theta = pyro.sample("theta", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    pyro.sample("x", CountingNormal(theta, SIGMA).to_event(1))


def uniform_model():
    """theta ~ U([-3, 3]^2), x ~ N(theta, 0.1^2 I_2)."""
    theta = pyro.sample("theta", dist.Uniform(-3.0, 3.0).expand([2]).to_event(1))
    pyro.sample("x", dist.Normal(theta, 0.1).to_event(1))


def posterior_error(estimator, seed=100):
    """The distance of the estimate at X_O from the exact posterior: the norm of the mean's
    error in posterior sds and of the log-ratios of the sds, from 4000 draws (Monte Carlo
    error about 0.03)."""
    with seeded(seed):
        draws = estimator.sample(X_O, 4000)["theta"]
    mean_error = (draws.mean(0) - MEAN) / SD
    log_sd_ratio = (draws.std(0) / SD).log()
    return torch.cat([mean_error, log_sd_ratio]).norm().item()


def fitted(rounds, seed, cls=NPE, num_simulations=1000, max_epochs=300, **options):
    torch.manual_seed(seed)
    estimator = cls(model, observed=["x"], **(SMALL_FLOW if cls is NPE else options))
    estimator.fit(
        num_simulations, rounds=rounds, x_o=X_O, seed=seed, progress=False, max_epochs=max_epochs
    )
    return estimator


@pytest.fixture(scope="module")
def sequential():
    """NPE trained in two rounds of 500 simulations at X_O (seed 1; 12 to 90 s on a shared
    CPU)."""
    return fitted(2, 1)


@pytest.fixture(scope="module")
def small():
    """A small NPE trained briefly in two rounds at X_O, for the contracts."""
    torch.manual_seed(0)
    estimator = NPE(model, observed=["x"], transforms=1, hidden_features=[16])
    estimator.fit(200, rounds=2, x_o=X_O, seed=0, progress=False, max_epochs=5)
    return estimator


# -------------------------------------------------------------------------------- budget


def test_round_sizes_sum_to_the_budget():
    assert round_sizes(1001, 3) == [334, 334, 333]
    assert sum(round_sizes(10_000, 7)) == 10_000
    with pytest.raises(ValueError, match="rounds=3"):
        round_sizes(5, 3)


def test_the_budget_is_exact_over_rounds():
    """The model draws x exactly num_simulations times over three rounds (the truncated priors
    run it with x observed, which draws nothing), and the estimator counts them."""
    torch.manual_seed(0)
    estimator = NPE(model, observed=["x"], transforms=1, hidden_features=[16])
    CountingNormal.drawn = 0
    estimator.fit(301, rounds=3, x_o=X_O, seed=0, progress=False, max_epochs=5)
    assert CountingNormal.drawn == 301
    assert int(estimator.num_simulations) == 301
    rounds = estimator.sequential_rounds
    assert [r["simulations"] for r in rounds] == [101, 100, 100]
    assert rounds[0]["sampler"] == "prior"
    assert len(estimator.training_losses) == sum(r["epochs"] for r in rounds)
    assert all(r["prior_mass"] <= 1 for r in rounds)


# ----------------------------------------------------------------------- truncated prior


@pytest.fixture(scope="module")
def region():
    """A truncated uniform prior around an (under-trained) NPE estimate of uniform_model, and
    exact draws of it: prior draws that lie in the region (rejection, exact). The region holds
    95% of the estimate (truncation=0.05): the small flow's tails make its 1 - 1e-4 region
    nearly the whole prior, and any region tests the sampler."""
    torch.manual_seed(0)
    estimator = NPE(uniform_model, observed=["x"], transforms=1, hidden_features=[16])
    estimator.fit(1000, seed=0, progress=False, max_epochs=60)
    x_o = torch.tensor([0.5, -1.0])
    with seeded(0):
        region = TruncatedPrior(estimator, x_o, truncation=0.05, draws=20_000, oversampling=50)
        prior = dist.Uniform(-3.0, 3.0).sample((200_000, 2))
    exact = prior[region.contains({"theta": prior})]
    return region, exact


@pytest.mark.parametrize("method", ["rejection", "sir"])
def test_truncated_prior_is_the_prior_restricted_to_the_region(region, method):
    """Draws of the truncated uniform prior lie in the region and are uniform there: their
    mean, sds and correlation match exact restricted draws (rejection from 200,000 prior
    draws) within 0.08 sd (Monte Carlo error of 4000 draws about 0.016 sd, more for SIR's
    repeats); and the region is smaller than the prior, with the prior mass estimated as the
    fraction of prior draws inside."""
    region, exact = region
    with seeded(1):
        draws = region.sample(4000, method=method)["theta"]
    assert draws.shape == (4000, 2)
    assert bool(region.contains({"theta": draws}).all())
    assert region.stats["sampler"] == method
    scale = exact.std(0)
    assert ((draws.mean(0) - exact.mean(0)) / scale).abs().max() < 0.08
    assert (draws.std(0) / scale - 1).abs().max() < 0.08
    correlation = torch.corrcoef(draws.T)[0, 1] - torch.corrcoef(exact.T)[0, 1]
    assert abs(correlation) < 0.08
    mass = len(exact) / 200_000
    assert mass < 0.5
    assert region.stats["prior_mass"] == pytest.approx(mass, rel=0.15)


def test_auto_switches_to_importance_resampling_for_a_small_region(region):
    """The "auto" method samples by rejection while the acceptance is at least
    1 / oversampling, else by SIR."""
    region, exact = region
    assert len(exact) / 200_000 < 0.5
    region.oversampling = 1000
    try:
        with seeded(2):
            region.sample(100)
        assert region.stats["sampler"] == "rejection"
        region.oversampling = 2
        with seeded(2):
            region.sample(100)
        assert region.stats["sampler"] == "sir"
    finally:
        region.oversampling = 50


# ---------------------------------------------------------------------------- accuracy


@pytest.mark.slow
def test_sequential_npe_beats_amortized_npe_at_equal_budget(sequential):
    """At 1000 simulations, NPE in two rounds of 500 is closer to the exact posterior at X_O
    than amortized NPE on 1000 prior simulations (error: norm of the mean's error in posterior
    sds and of the log sd ratios, see posterior_error). Measured over seeds 0 to 7: amortized
    0.18, 0.31, 0.59, 21.4, 0.27, ...; sequential 0.26, 0.23, 0.24, 0.41, ...: sequential
    is never far off, amortized NPE is worse on most seeds and sometimes fails (its 500
    simulations near nothing: the region of x_o holds about 1% of the prior). Seeds 1 and 2:
    amortized 0.31 and 0.59, sequential 0.23 and 0.24."""
    amortized = [posterior_error(fitted(1, seed)) for seed in (1, 2)]
    rounds = [posterior_error(sequential), posterior_error(fitted(2, 2))]
    assert max(rounds) < 0.35, rounds
    assert sum(rounds) < sum(amortized) - 0.2, (rounds, amortized)
    regions = sequential.sequential_rounds
    assert regions[1]["sampler"] in ("rejection", "sir")
    # the second round's region is a fraction of the prior (measured 0.14 at seed 1 on the
    # CI fixture; 1.0 would mean that the truncation did nothing)
    assert regions[1]["prior_mass"] < 0.3


@pytest.mark.slow
@pytest.mark.parametrize(
    "cls, options",
    [(FMPE, {"hidden": (64, 64), "steps": 16}), (NPSE, {"hidden": (64, 64), "steps": 32})],
)
def test_fmpe_and_npse_in_two_rounds(cls, options):
    """FMPE and NPSE in two rounds of 500 simulations truncate the prior and give a posterior
    near the exact one, much looser than NPE: measured errors (posterior_error, in posterior
    sds; the posterior is 50 times narrower than the prior) 4.7 for FMPE and 1.8 for NPSE,
    i.e. within 0.1 prior sd; the bound 8 is 0.16 prior sd."""
    estimator = fitted(2, 0, cls, max_epochs=200, **options)
    assert estimator.sequential_rounds[1]["prior_mass"] < 0.5
    assert posterior_error(estimator) < 8.0


# ------------------------------------------------------------------ the observation kept


def test_x_o_is_kept_saved_and_warned_about(small, tmp_path):
    sequential = small
    """The estimator records x_o, keeps it through save and load, and warns when asked for
    another observation."""
    assert torch.equal(sequential.x_o["x"], X_O)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sequential.sample(X_O, 10)
        sequential.log_prob({"theta": MEAN}, X_O)
    with pytest.warns(UserWarning, match="trained sequentially"):
        sequential.sample(X_O + 0.1, 10)
    with pytest.warns(UserWarning, match="trained sequentially"):
        sequential.log_prob({"theta": MEAN}, X_O + 0.1)
    sequential.save(tmp_path / "npe.pt")
    loaded = NPE.load(tmp_path / "npe.pt", model)
    assert torch.equal(loaded.x_o["x"], X_O)
    assert loaded.sequential_rounds == sequential.sequential_rounds
    with pytest.warns(UserWarning, match="trained sequentially"):
        loaded.sample(X_O + 0.1, 10)


def test_a_seed_reproduces_the_rounds():
    def run():
        torch.manual_seed(0)
        estimator = NPE(model, observed=["x"], transforms=1, hidden_features=[16])
        estimator.fit(200, rounds=2, x_o=X_O, seed=3, progress=False, max_epochs=3)
        with seeded(0):
            return estimator.sample(X_O, 5)["theta"], estimator.sequential_rounds

    (first, rounds), (second, again) = run(), run()
    assert torch.equal(first, second)
    assert rounds == again


def test_condition_trains_in_rounds():
    """method="npe" with rounds= trains an estimator for the data and draws from it."""
    posterior = condgen.condition(
        model, {"x": X_O}, method="npe", rounds=2, num_simulations=200, num_samples=50,
        estimator_options={"transforms": 1, "hidden_features": [16]},
        fit_options={"max_epochs": 3}, seed=0, progress=False,
    )  # fmt: skip
    assert posterior.samples["theta"].shape == (1, 50, 2)
    assert posterior.stats["rounds"] == 2
    assert posterior.stats["num_simulations"] == 200


# ----------------------------------------------------------------------------- bad input


def test_bad_input_names_the_argument(small):
    sequential = small
    estimator = NPE(model, observed=["x"], transforms=1, hidden_features=[16])
    for rounds in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="rounds"):
            estimator.fit(100, rounds=rounds, x_o=X_O)
    with pytest.raises(ValueError, match="x_o"):
        estimator.fit(100, rounds=2)
    with pytest.raises(ValueError, match="x_o"):
        estimator.fit(100, rounds=2, x_o=torch.zeros(3))
    with pytest.raises(ValueError, match="x_o"):
        estimator.fit(100, rounds=2, x_o=torch.tensor([0.0, math.nan]))
    with pytest.raises(ValueError, match="x_o"):
        estimator.fit(100, rounds=2, x_o=torch.zeros(4, 2))
    with pytest.raises(ValueError, match="checkpoint"):
        estimator.fit(100, rounds=2, x_o=X_O, checkpoint="fit.pt")
    with pytest.raises(ValueError, match="simulations"):
        estimator.fit(100, rounds=2, x_o=X_O, simulations=estimator.simulate(100))
    with pytest.raises(ValueError, match="truncation"):
        estimator.fit(100, rounds=2, x_o=X_O, truncation=1.0, max_epochs=1, progress=False)
    with pytest.raises(ValueError, match="x_o differs"):
        sequential.fit(100, rounds=2, x_o=X_O + 1)
    with pytest.raises(ValueError, match="either estimator"):
        condgen.condition(model, {"x": X_O}, method="npe", estimator=sequential, rounds=2)
