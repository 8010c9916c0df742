"""Tests of flow-matching and score-based posterior estimation: condgen.infer.FMPE and NPSE,
methods "fmpe" and "npse".

Times on one CPU thread of a shared, loaded 2-core machine: the whole file took 211 s, of which
the two-moons C2ST tests (slow) took 137 s and the two SBC tests 26 s."""

import math
import os

import pyro
import pyro.distributions as dist
import pytest
import torch

import condgen
from condgen.evaluate import GaussianLinear, TwoMoons, calibration
from condgen.infer import FMPE, NPE, NPSE

ESTIMATORS = [FMPE, NPSE]
SMALL = {"hidden": (32, 32), "steps": 8}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def two_outputs_model():
    theta = pyro.sample("theta", dist.Normal(0.0, 1.0))
    pyro.sample("y1", dist.Normal(theta, 1.0))
    pyro.sample("y2", dist.Normal(theta, 1.0))


@pytest.fixture(scope="module", params=ESTIMATORS, ids=lambda cls: cls.__name__)
def linear(request):
    """A GaussianLinear task (d = 2, posterior N(x / 2, 0.005 I)) and an estimator with the
    default network and training, and 32 sampler steps (a Gaussian needs fewer than two
    moons), trained on 5000 of its simulations (about 10 s each)."""
    threads = torch.get_num_threads()  # module fixtures run before the autouse one
    torch.set_num_threads(1)
    task = GaussianLinear(dim=2, seed=0)
    torch.manual_seed(0)
    estimator = request.param(task.model, observed=["x"], steps=32)
    estimator.fit(5000, seed=0, progress=False)
    torch.set_num_threads(threads)
    return task, estimator


def _tiny(cls, model, observed, **options):
    torch.manual_seed(0)
    estimator = cls(model, observed=observed, **SMALL, **options)
    estimator.fit(300, max_epochs=2, seed=0, progress=False)
    return estimator


# ------------------------------------------------------------------------------ accuracy


@pytest.mark.slow
@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda cls: cls.__name__)
def test_two_moons_c2st(cls, two_moons_scores):
    """With its defaults, C2ST against the exact posterior (1000 draws each side) averaged over
    the standard observation (0, 0) and two simulated ones.

    At 10^4 simulations it is at most 0.65 (sbi 0.27's FMPE with its defaults: 0.73 on this
    task in benchmarks/implicit.py, three seeds; measured here FMPE 0.564, NPSE 0.583, after
    38 s and 62 s of training on one thread). Under ``CI`` the estimators train on 2000
    simulations, too few for these estimators to be good (measured with the current defaults
    FMPE 0.739: 0.711, 0.770, 0.738 after 10 s; NPSE 0.752: 0.719, 0.774, 0.762 after 22 s),
    and the bound is 0.85: a broken estimator scores near 1."""
    simulations, bound = (2000, 0.85) if os.environ.get("CI") else (10_000, 0.65)
    torch.manual_seed(0)
    estimator = cls(TwoMoons().model, observed=["x"])
    estimator.fit(simulations, seed=0, progress=False)
    scores = two_moons_scores(estimator, cls.label.lower())
    assert sum(scores) / len(scores) <= bound, scores


def test_gaussian_linear_moments_and_log_prob(linear):
    """Draws match the closed-form posterior N(x / 2, 0.005 I), and log_prob through the
    probability-flow ODE matches its exact log-density.

    Moments, for three observations with 4000 draws: the Monte Carlo error is 1.6% of an sd
    for the mean and 1.1% for the sd; the slack, 0.15 sd and 8%, is for the estimator's own
    error from 5000 simulations (measured: at most 0.06 sd and 3%).

    Log-density, at 50 exact draws of two observations: if the estimator is
    :math:`N(m + \\delta s, (1 + \\epsilon)^2 s^2)` per coordinate, :math:`\\log q - \\log p
    \\approx \\epsilon (z^2 - 1) + \\delta z` at :math:`z \\sim N(0, 1)`, with mean
    :math:`O(\\epsilon^2 + \\delta^2)` and sd :math:`\\sqrt{2 \\epsilon^2 + \\delta^2}` per
    coordinate: 0.17 over two coordinates for :math:`|\\epsilon| \\le 0.05`, :math:`|\\delta|
    \\le 0.1`. So the mean difference must be below 0.05 and its sd below 0.2 (measured for
    FMPE: |mean| < 0.006, sd < 0.07); the ODE solver's tolerance (1e-5) is negligible. An error
    in the divergence or in a Jacobian would shift the mean by O(1)."""
    _, estimator = linear
    for seed in (0, 1, 2):
        observed = GaussianLinear(dim=2, seed=seed)
        exact = observed.posterior()["theta"]
        torch.manual_seed(seed)
        draws = estimator.sample(observed.data, 4000)["theta"]
        sd = exact.stddev
        assert ((draws.mean(0) - exact.mean).abs() < 0.15 * sd).all(), (draws.mean(0), exact.mean)
        assert ((draws.std(0) / sd - 1).abs() < 0.08).all(), (draws.std(0), sd)
        if seed == 2:
            continue
        points = exact.sample((50,))
        difference = estimator.log_prob({"theta": points}, observed.data) - exact.log_prob(points)
        assert difference.shape == (50,)
        assert difference.mean().abs() < 0.05 and difference.std() < 0.2, difference


def test_calibration(linear):
    """SBC through condgen.evaluate.calibration passes the ECDF uniformity test at level 0.01,
    and coverage of the central 90% intervals is within 4 binomial sd (0.12) of 0.9 with 100
    simulations (each a probability-flow ODE solve for 100 draws)."""
    task, estimator = linear
    name = estimator.label.lower()
    cal = calibration(
        task.model, name, estimator=estimator, observed=["x"], num_simulations=100,
        num_samples=100, seed=0, progress=False,
    )  # fmt: skip
    assert cal.method == name and cal.num_simulations == 100
    assert cal.passed(), cal.summary()
    coverage = cal.expected_coverage([0.9]).loc[0.9, "mean"]
    assert abs(coverage - 0.9) < 4 * math.sqrt(0.9 * 0.1 / 100)


def test_validation_loss_falls(linear):
    """The validation loss (its noise drawn from a fixed generator, so that it differs between
    epochs by the weights only) falls by more than 0.1 over the training. The training loss is
    not compared between epochs: NPSE's draws a new time and noise per simulation, and its
    epoch means scatter by about 0.2 around a nearly flat trend here. (The histories' lengths
    and a seed's reproducibility are in tests/test_estimator_contracts.py.)"""
    _, estimator = linear
    assert min(estimator.validation_losses) < estimator.validation_losses[0] - 0.1


# ---------------------------------------------------------------------------- structure


@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda cls: cls.__name__)
def test_validation_loss_uses_a_fixed_generator(cls):
    """The validation loss draws its times and noise from the generator it is given, so two
    evaluations with the same seed agree (the reproducibility of training and draws under a
    seed is in tests/test_estimator_contracts.py)."""
    task = GaussianLinear(dim=2, seed=0)
    estimator = _tiny(cls, task.model, ["x"])
    theta, x, _ = estimator._training_data(estimator.simulate(50, seed=1))
    losses = [
        estimator._objective(theta, x, torch.Generator().manual_seed(0)).item() for _ in range(2)
    ]
    assert losses[0] == losses[1]


def test_nfe_counts_the_sampler_steps():
    """One sampling pass with the default sampler costs 2 steps + 1 network evaluations, which
    condition reports as its ``nfe`` (tests/test_estimator_contracts.py): 129 for FMPE's default
    steps, 257 for NPSE's."""
    task = GaussianLinear(dim=2, seed=0)
    assert FMPE(task.model, "x").nfe == 129 and NPSE(task.model, "x").nfe == 257
    assert all(cls(task.model, "x", steps=8).nfe == 17 for cls in ESTIMATORS)


# -------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda cls: cls.__name__)
def test_errors(cls):
    """Untrained estimators, wrong or non-finite observations, unknown options and mismatched
    estimators give ValueErrors that say what works."""
    name = cls.label.lower()
    task = GaussianLinear(dim=2, seed=0)
    untrained = cls(task.model, observed=["x"], **SMALL)
    with pytest.raises(ValueError, match="untrained"):
        untrained.sample(task.data, 3)
    with pytest.raises(ValueError, match="untrained"):
        condgen.condition(task.model, task.data, method=name, estimator=untrained,
                          progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="needs a trained estimator"):
        condgen.condition(task.model, task.data, method=name, progress=False)
    with pytest.raises(ValueError, match=rf"must be a condgen\.infer\.{cls.label}"):
        condgen.condition(task.model, task.data, method=name, estimator=NPE(task.model, "x"),
                          progress=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['steps'\]"):
        condgen.condition(task.model, task.data, method=name, steps=3, progress=False)
    with pytest.raises(ValueError, match="unknown sampler"):
        cls(task.model, observed=["x"], sampler="rk4")
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        cls(task.model, observed=["x"], steps=0)
    with pytest.raises(ValueError, match="time_power must be positive"):
        cls(task.model, observed=["x"], time_power=0.0)
    with pytest.raises(ValueError, match="ema must lie"):
        untrained.fit(100, ema=1.0)

    trained = _tiny(cls, model=task.model, observed=["x"])
    with pytest.raises(ValueError, match=r"shape \(3,\).*shape \(2,\)"):
        trained.sample(torch.zeros(3), 3)
    with pytest.raises(ValueError, match="site 'x' has NaN"):
        trained.sample(torch.tensor([0.1, float("nan")]), 3)
    with pytest.raises(ValueError, match="site 'x' has NaN"):
        trained.log_prob({"theta": torch.zeros(2)}, torch.tensor([float("inf"), 0.0]))
    with pytest.raises(ValueError, match="latent sites"):
        other = GaussianLinear(dim=3)
        condgen.condition(other.model, other.data, method=name, estimator=trained,
                          progress=False)  # fmt: skip

    several = _tiny(cls, model=two_outputs_model, observed=["y1", "y2"])
    with pytest.raises(ValueError, match=r"trained to condition on the sites \['y1', 'y2'\]"):
        condgen.condition(two_outputs_model, {"y1": torch.tensor(0.5)}, method=name,
                          estimator=several, progress=False)  # fmt: skip
