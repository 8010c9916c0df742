"""The simulation-based inference benchmark's tasks against sbibm's reference posteriors, their
simulators against independent computations (hand-written densities, SciPy's ODE solver, the raw
spike trains), and sbibm's C2ST.

The reference checks compare 1000 draws of each task's posterior at sbibm's observation 1 with
1000 of sbibm's reference draws by condgen's C2ST (sbibm's recipe in torch, a few seconds; the
scikit-learn version is minutes in 10-D). The draws come from the task's exact sampler where it
has one, else from importance sampling with the model's own log joint
(:meth:`SbibmTask.reweighted_reference`, a proposal made from other sbibm draws, resampled).
Equal distributions give an accuracy of 0.5 +- 0.011 (the standard deviation of an accuracy on
2000 held-out points) plus a little overfitting; the measured values are 0.46-0.53 (SLCP's
0.53 with an effective sample size of 3000), so the threshold is 0.56. Simulators off by a
fraction reach it: a binomial of 800 trials instead of 1000 (SIR) gives 0.98, a log-normal noise
of 0.15 instead of 0.1 (Lotka-Volterra) 0.64, sbibm's Gaussian linear with condgen's default
scales (standard deviations 0.1, not sqrt(0.1)) 1.0.
"""

import importlib.util
import math
import sys

import pyro
import pytest
import torch

import condgen
from condgen.evaluate import (
    SIR,
    SLCP,
    BernoulliGLM,
    GaussianLinear,
    GaussianLinearUniform,
    GaussianMixture,
    LotkaVolterra,
    SbibmTask,
    TwoMoons,
    available_tasks,
    c2st,
    get_task,
    sbibm_c2st,
)
from condgen.evaluate.tasks.sbibm import read_sbibm

HAS_SBIBM = importlib.util.find_spec("sbibm") is not None
needs_sbibm = pytest.mark.skipif(not HAS_SBIBM, reason="sbibm is not installed")
NAMES = [
    "two_moons",
    "slcp",
    "gaussian_linear",
    "gaussian_mixture",
    "gaussian_linear_uniform",
    "bernoulli_glm",
    "sir",
    "lotka_volterra",
]
EXACT = {"two_moons", "gaussian_linear", "gaussian_mixture", "gaussian_linear_uniform"}
THRESHOLD = 0.56  # see the module docstring


def _posterior_draws(task: SbibmTask, n: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    if task.exact:
        return task.reference_samples(n, seed=3)["theta"], task.sbibm_samples(n)["theta"], n
    proposals = 100_000 if task.sbibm_name == "slcp" else 20_000
    return task.reweighted_reference(n, seed=0, num_proposals=proposals)


@needs_sbibm
@pytest.mark.parametrize("name", NAMES)
def test_posterior_matches_sbibm_reference(name):
    task = get_task(name)
    draws, reference, ess = _posterior_draws(task, 1000)
    assert ess >= 1000
    assert float(c2st(reference, draws)) <= THRESHOLD


def _wrong_gaussian_linear():
    """condgen's default scales (standard deviations 0.1) at sbibm's observation 1."""
    sbibm = GaussianLinear.sbibm(1)
    task = GaussianLinear(observation=sbibm.data["x"])
    return task.reference_samples(1000)["theta"], sbibm.sbibm_samples(1000)["theta"]


MUTANTS = {
    "sir-800-trials": lambda: type("Mutant", (SIR,), {"total_count": 800})(1),
    "lotka-volterra-noise-0.15": lambda: type("Mutant", (LotkaVolterra,), {"noise": 0.15})(1),
}


@needs_sbibm
@pytest.mark.parametrize("case", [*MUTANTS, "gaussian-linear-condgen-scales"])
def test_the_reference_check_detects_a_wrong_simulator(case):
    if case in MUTANTS:
        draws, reference, _ = MUTANTS[case]().reweighted_reference(1000, seed=0)
    else:
        draws, reference = _wrong_gaussian_linear()
    assert float(c2st(reference, draws)) > 0.6


# ------------------------------------------------------------------ simulators, independently


@needs_sbibm
def test_gaussian_mixture_and_uniform_linear_likelihoods_by_hand():
    """log p(x | theta) written out: a two-component mixture of isotropic Gaussians with
    standard deviations 1 and 0.1; a Gaussian of variance 0.1."""
    theta = torch.tensor([[0.3, -1.0], [-9.5, -1.5]], dtype=torch.float64)
    x = GaussianMixture().data["x"].double()

    def normal(sd):
        return torch.exp(-((x - theta) ** 2).sum(-1) / (2 * sd**2)) / (2 * math.pi * sd**2)

    want = torch.log(0.5 * normal(1.0) + 0.5 * normal(0.1))
    torch.testing.assert_close(GaussianMixture().likelihood(theta).log_prob(x), want)
    task = GaussianLinearUniform()
    theta = torch.linspace(-1, 1, 10, dtype=torch.float64)
    x = task.data["x"].double()
    want = -((x - theta) ** 2).sum() / 0.2 - 5 * math.log(2 * math.pi * 0.1)
    torch.testing.assert_close(task.likelihood(theta).log_prob(x), want)


@needs_sbibm
def test_bernoulli_glm_statistics_are_the_raw_spike_trains():
    """sbibm's observation.csv holds X^T y of its observation_raw.csv; the likelihood of the
    statistics equals the Bernoulli likelihood of the spike train; the prior's precision has
    sbibm's structure (offset 0.5; the filter's second differences)."""
    task = BernoulliGLM(observation=4)
    spikes = read_sbibm("bernoulli_glm", "observation_raw.csv", 4)[0].double()
    design = task.design.double()
    torch.testing.assert_close(spikes @ design, task.data["x"].double(), atol=1e-4, rtol=1e-5)
    theta = torch.randn(5, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    want = torch.distributions.Bernoulli(logits=theta @ design.T).log_prob(spikes).sum(-1)
    got = task.likelihood(theta).log_prob(spikes @ design)
    torch.testing.assert_close(got, want)
    precision = task.precision.double()
    assert precision[0, 0] == 0.5 and (precision[0, 1:] == 0).all()
    assert torch.linalg.eigvalsh(precision).min() > 0


@needs_sbibm
def test_ode_solutions_match_scipy():
    """The RK4 solution in log variables against SciPy's DOP853 (rtol 1e-10) in the original
    ones, at sbibm's true parameters of observations 1 and 2."""
    integrate = pytest.importorskip("scipy.integrate")
    for number in (1, 2):
        sir = SIR(observation=number)
        beta, gamma = sir.truth.double().tolist()
        n = sir.population

        def sir_rate(t, u, beta=beta, gamma=gamma, n=n):
            return [-beta * u[0] * u[1] / n, beta * u[0] * u[1] / n - gamma * u[1]]

        times = 17.0 * torch.arange(10)
        solution = integrate.solve_ivp(
            sir_rate, (0, 153), [n - 1, 1], "DOP853", t_eval=times, rtol=1e-10, atol=1e-8
        )
        want = torch.tensor(solution.y[1] / n)
        got = sir.infected(sir.truth.double()).exp()
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)

        lv = LotkaVolterra(observation=number)
        a, b, c, d = lv.truth.double().tolist()

        def lv_rate(t, u, a=a, b=b, c=c, d=d):
            return [a * u[0] - b * u[0] * u[1], -c * u[1] + d * u[0] * u[1]]

        times = 2.1 * torch.arange(10)
        solution = integrate.solve_ivp(
            lv_rate, (0, 18.9), [30.0, 1.0], "DOP853", t_eval=times, rtol=1e-10, atol=1e-10
        )
        got = lv.populations(lv.truth.double())
        torch.testing.assert_close(got, torch.tensor(solution.y).log(), atol=1e-4, rtol=0)


# ------------------------------------------------------------ shapes, batching, observations


@needs_sbibm
@pytest.mark.parametrize("name", NAMES)
def test_model_shapes_batching_and_observation_scale(name):
    """The model runs under a plate of particles (prior draws in the support, a finite log joint
    per particle), and the observation is a typical draw of the simulator at sbibm's true
    parameter: every coordinate within 5 standard deviations of 400 simulations."""
    task = get_task(name)
    assert task.name == name and repr(task).endswith("(observation=1)")
    shape = task.data["x"].shape
    trace = _trace_particles(task.model, 6)
    theta, x = trace.nodes["theta"]["value"], trace.nodes["x"]["value"]
    assert theta.shape == (6, *task.truth.shape) and x.shape == (6, *shape)
    assert trace.nodes["theta"]["fn"].support.check(theta).all()
    assert torch.isfinite(x).all()
    log_joint = task.log_joint({"theta": theta})
    assert log_joint.shape == (6,) and torch.isfinite(log_joint).all()
    truth = task.truth.expand(400, *task.truth.shape)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        simulated = _likelihood(task, truth).sample().reshape(400, -1)
    observed = task.data["x"].reshape(-1)
    mean, sd = simulated.mean(0), simulated.std(0)
    constant = sd == 0
    assert torch.equal(observed[constant], mean[constant])
    assert ((observed - mean)[~constant].abs() <= 5 * sd[~constant]).all()


def _likelihood(task, theta):
    if isinstance(task, GaussianLinear):
        return torch.distributions.Normal(theta, task.noise)
    if isinstance(task, TwoMoons):
        return condgen.evaluate.TwoMoonsLikelihood(theta)
    return task.likelihood(theta)


def _trace_particles(model, size):
    """The trace of a model run under an outer plate of ``size`` particles."""

    def batched():
        with pyro.plate("particles", size, dim=-1):
            model()

    return pyro.poutine.trace(batched).get_trace()


def test_registry_and_observation_errors():
    listed = available_tasks()
    assert set(NAMES) <= set(listed)
    assert {"two-moons", "gaussian-linear"} <= set(listed)  # condgen's own settings, kept
    methods = set(condgen.methods.available())
    for name in NAMES:
        assert listed[name] and "\n" not in listed[name]
        assert set(get_task(name).default_methods) <= methods
    sizes = {GaussianMixture: 2, GaussianLinearUniform: 10, SIR: 10, LotkaVolterra: 20, SLCP: 8}
    for cls, size in sizes.items():
        with pytest.raises(ValueError, match="numbered 1 to 10, got observation=0"):
            cls(observation=0)
        with pytest.raises(ValueError, match="observation must be a number 1 to 10 or"):
            cls(observation=torch.zeros(3))
        task = cls(observation=torch.ones(1, size))
        assert task.truth is None and task.num_observation is None
        with pytest.raises(ValueError, match="sbibm's observations only"):
            task.sbibm_samples(10)
    with pytest.raises(ValueError, match=r"GaussianLinear.sbibm\(observation\)"):
        GaussianLinear(observation=2)
    with pytest.raises(ValueError, match="finite"):
        GaussianMixture(observation=[math.nan, 0.0])
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        SIR(observation=torch.zeros(10), steps=0)


@pytest.mark.parametrize("name", ["sir", "gaussian_mixture", "bernoulli_glm", "two_moons"])
def test_missing_sbibm_says_how_to_install(monkeypatch, name):
    monkeypatch.setattr(importlib.util, "find_spec", lambda module, *args: None)
    with pytest.raises(ImportError, match=r"pip install --no-deps sbibm"):
        get_task(name)


@needs_sbibm
def test_sbibm_observations_and_reference_draws():
    task = get_task("gaussian_linear", observation=3)
    assert task.prior_scale == task.noise == math.sqrt(0.1) and task.num_observation == 3
    draws = task.sbibm_samples(10_000)["theta"]
    assert draws.shape == (10_000, 10)
    # sbibm's reference is the conjugate posterior N(x/2, 0.05 I) of its variances 0.1
    se = math.sqrt(0.05 / 10_000)
    assert ((draws.mean(0) - task.data["x"] / 2).abs() < 4.5 * se).all()
    assert ((draws.var(0) / 0.05 - 1).abs() < 4.5 * math.sqrt(2 / 10_000)).all()
    with pytest.raises(ValueError, match="10000 reference draws, 10001"):
        task.sbibm_samples(10_001)
    assert torch.equal(
        task.sbibm_samples(5, seed=2)["theta"], task.sbibm_samples(5, seed=2)["theta"]
    )
    moons = get_task("two_moons", observation=7)
    assert moons.num_observation == 7 and (moons.truth.abs() <= 1).all()
    assert TwoMoons().num_observation is None  # condgen's own (0, 0)


# ------------------------------------------------------------------------------ sbibm's C2ST


def test_sbibm_c2st_known_cases():
    """Equal distributions: 0.5 within 4.5 standard errors of an accuracy on 800 points (plus
    0.03 for the classifier's overfitting); disjoint ones: 1; a shift of one standard
    deviation: the Bayes accuracy Phi(1/2) = 0.69 within 0.05, as condgen's c2st finds too."""
    pytest.importorskip("sklearn")
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 400, 2, generator=generator)
    assert abs(sbibm_c2st(x, y) - 0.5) <= 4.5 * 0.5 / math.sqrt(800) + 0.03
    assert sbibm_c2st(x, y + 10) == 1.0
    shifted = y + torch.tensor([1.0, 0.0])
    bayes = float(torch.distributions.Normal(0, 1).cdf(torch.tensor(0.5)))
    assert abs(sbibm_c2st(x, shifted) - bayes) <= 0.05
    assert abs(float(c2st(x, shifted)) - bayes) <= 0.05


def test_sbibm_c2st_without_scikit_learn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.model_selection", None)
    with pytest.raises(ImportError, match="scikit-learn"):
        sbibm_c2st(torch.zeros(10, 2), torch.ones(10, 2))
