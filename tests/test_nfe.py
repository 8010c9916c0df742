"""The cost that every method reports, ``stats["nfe"]`` and ``stats["vjp"]`` (network
evaluations and vector-Jacobian products through them, per particle), against an independent
count: a network that counts the points it evaluates and the backward passes through its
output itself, for every registered method that walks a path prior (and the unregistered
SMC kernels), with its ancestral and Heun samplers, and for the amortized path estimators."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import condgen
from condgen.amortized.path import PathEstimator
from condgen.infer import FMPE, NPSE
from condgen.methods import (
    CFG,
    DPS,
    SMC,
    TDS,
    ClassifierGuidance,
    CovarianceSMC,
    Gibbs,
    Langevin,
    MomentTwistSMC,
    PiGDM,
)
from condgen.methods.path import PathMethod
from condgen.priors import DiffusionPrior, VPSchedule
from condgen.priors.counting import EvaluationCounter

# short runs of few particles: their convergence warnings are expected, and not the point here
pytestmark = pytest.mark.filterwarnings("ignore::condgen.diagnostics.ConvergenceWarning")

A = torch.tensor([[1.0, 0.5]])  # a 1 x 2 linear observation
NUM_SAMPLES = 12  # divides among the SMC methods' runs: every particle is a requested one


class _CountBackward(torch.autograd.Function):
    """The identity, whose backward pass adds the batch's points to the network's VJPs."""

    @staticmethod
    def forward(ctx, output, network, points):
        ctx.network, ctx.points = network, points
        return output.clone()

    @staticmethod
    def backward(ctx, grad):
        ctx.network.vjps += ctx.points
        return grad, None, None


class CountingGaussianDenoiser(nn.Module):
    """The exact denoiser of a Gaussian prior N(m, I) along the VP path, m the context (0
    without one), that counts its own calls, the points it evaluates (calls times batch) and
    the vector-Jacobian products through its output (backward passes times batch)."""

    def __init__(self):
        super().__init__()
        self.schedule = VPSchedule()
        self.calls = self.points = self.vjps = 0

    def forward(self, x_t, t, context=None):
        points = x_t.numel() // x_t.shape[-1]
        self.calls, self.points = self.calls + 1, self.points + points
        alpha, sigma = (v[..., None] for v in self.schedule(t))
        mean = torch.zeros_like(x_t) if context is None else context.expand_as(x_t)
        x0 = mean + alpha / (alpha**2 + sigma**2) * (x_t - alpha * mean)
        return _CountBackward.apply(x0, self, points)


def linear_problem(network):
    def model():
        x = pyro.sample("x", DiffusionPrior(network, event_shape=(2,)))
        pyro.sample("y", dist.Normal(x @ A.T, 0.5).to_event(1))

    return model, {"y": torch.tensor([0.8])}


def nonlinear_problem(network):
    """A likelihood that is not linear-Gaussian: ``smc`` moves by the TDS kernel."""

    def model():
        x = pyro.sample("x", DiffusionPrior(network, event_shape=(2,)))
        pyro.sample("y", dist.Normal(x[..., :1].tanh(), 0.3).to_event(1))

    return model, {"y": torch.tensor([0.5])}


def noise_scale_problem(network):
    """The neural site beside a noise scale (for Gibbs)."""

    def model():
        s = pyro.sample("s", dist.HalfNormal(1.0))
        x = pyro.sample("x", DiffusionPrior(network, event_shape=(2,)))
        pyro.sample("y", dist.Normal(x @ A.T, s.unsqueeze(-1)).to_event(1))

    return model, {"y": torch.tensor([0.8])}


def context_problem(network):
    """A conditional prior bound to a context (for classifier-free guidance)."""

    def model():
        prior = DiffusionPrior(network, event_shape=(2,)).given(torch.tensor([1.0, -1.0]))
        pyro.sample("x", prior)

    return model, {}


def _log_classifier(x_t, t):
    return -(x_t - 1).pow(2).sum(-1)


# name, problem, method, the particles the cost is per: the registered methods that walk a path
# prior (by their default name, with the ancestral and the Heun sampler), and the unregistered
# SMC kernels
CASES = [
    ("dps", linear_problem, DPS(steps=6), NUM_SAMPLES),
    ("dps", linear_problem, DPS(steps=6, sampler="heun"), NUM_SAMPLES),
    ("pigdm", linear_problem, PiGDM(steps=6), NUM_SAMPLES),
    ("pigdm", linear_problem, PiGDM(steps=6, sampler="heun"), NUM_SAMPLES),
    ("classifier", linear_problem, ClassifierGuidance(_log_classifier, steps=6), NUM_SAMPLES),
    (
        "classifier",
        linear_problem,
        ClassifierGuidance(_log_classifier, steps=6, sampler="heun"),
        NUM_SAMPLES,
    ),
    ("cfg", context_problem, CFG(scale=2.0, steps=6), NUM_SAMPLES),
    ("cfg", context_problem, CFG(scale=2.0, steps=6, sampler="heun"), NUM_SAMPLES),
    ("langevin", linear_problem, Langevin(steps=6, corrector_steps=2), NUM_SAMPLES),
    (
        "langevin",
        linear_problem,
        Langevin(steps=6, corrector_steps=1, sampler="heun"),
        NUM_SAMPLES,
    ),
    ("smc", linear_problem, SMC(steps=6, num_runs=2, moment_samples=16), NUM_SAMPLES),
    ("smc", nonlinear_problem, SMC(steps=6, num_runs=2), NUM_SAMPLES),
    ("tds", linear_problem, TDS(steps=6, num_runs=3), NUM_SAMPLES),
    ("smc", linear_problem, CovarianceSMC(steps=6, num_runs=2, moment_samples=16), NUM_SAMPLES),
    ("smc", linear_problem, MomentTwistSMC(steps=6, num_runs=2, moment_samples=16), NUM_SAMPLES),
    (
        "gibbs",
        noise_scale_problem,
        Gibbs(num_chains=1, warmup_steps=2, num_particles=5, steps=4),
        5,  # the particles of a sweep: gibbs's cost is per particle of a sweep, over all sweeps
    ),
]


def _needs_denoiser(name: str) -> bool:
    method = condgen.methods.get(name)
    sampler = getattr(method, "sampler", None)
    estimator = getattr(method, "estimator_class", None)
    return (
        isinstance(method, PathMethod)
        or isinstance(sampler, PathMethod)
        or (estimator is not None and issubclass(estimator, PathEstimator))
    )


def test_every_path_method_is_counted():
    """Every registered method that evaluates a denoiser is a case of the tests below."""
    path_methods = {name for name in condgen.methods.available() if _needs_denoiser(name)}
    covered = {name for name, *_ in CASES} | {"fmpe", "npse"}
    assert path_methods == covered


def _run(network, problem, method):
    """Conditions the problem made with ``network`` (which counts the run alone: tracing the
    model, which draws from the prior, is not the method's cost)."""
    problem = condgen.Problem(*problem(network))
    network.calls = network.points = network.vjps = 0
    return condgen.condition(
        problem, method=method, num_samples=NUM_SAMPLES, seed=0, progress=False
    )


def _case_id(case) -> str:
    name, problem, method, _ = case
    sampler = getattr(method, "sampler", None)
    words = [name, type(method).__name__, problem.__name__.split("_")[0]]
    return "-".join(words + ([sampler] if isinstance(sampler, str) else []))


@pytest.mark.parametrize(
    "problem, method, particles", [case[1:] for case in CASES], ids=map(_case_id, CASES)
)
def test_stats_match_the_network_count(problem, method, particles):
    """``nfe`` and ``vjp`` times the particles are the points the network evaluated and the
    VJPs through it over the whole run (moments, every batch, run and sweep included), exactly:
    both are integer counts of the same events, made by different means (the network counts
    itself; the stats come from :class:`~condgen.priors.counting.EvaluationCounter`)."""
    network = CountingGaussianDenoiser()
    post = _run(network, problem, method)
    assert network.calls > 0
    assert post.stats["nfe"] * particles == network.points
    assert post.stats["vjp"] * particles == network.vjps


def test_known_costs():
    """The counts of a few methods in closed form, against the stats: an ancestral step is one
    evaluation, a Heun step two, each sampler ends with one more; DPS takes one VJP a step,
    PiGDM one per guided evaluation (the last included), TDS one at each of the steps + 1
    times; classifier-free guidance evaluates the conditional and unconditional models."""
    expected = [
        (DPS(steps=6), linear_problem, 7, 6),
        (DPS(steps=6, sampler="heun"), linear_problem, 13, 6),
        (PiGDM(steps=6, sampler="heun"), linear_problem, 13, 13),
        (CFG(steps=6, sampler="heun"), context_problem, 2 * 13, 0),
        (TDS(steps=6, num_runs=3), linear_problem, 7, 7),
    ]
    for method, problem, nfe, vjp in expected:
        post = _run(CountingGaussianDenoiser(), problem, method)
        assert (post.stats["nfe"], post.stats["vjp"]) == (nfe, vjp), method


def _counted_network(estimator):
    """Counts the points that the estimator's network evaluates, by a forward hook."""
    count = {"points": 0}

    def hook(module, args, output):
        count["points"] += args[0].numel() // args[0].shape[-1]

    estimator.network.register_forward_hook(hook)
    return count


@pytest.mark.parametrize(
    "cls, sampler", [(FMPE, "heun"), (NPSE, "euler"), (NPSE, "ddpm")], ids=str
)
def test_amortized_path_estimators(cls, sampler):
    """The ``nfe`` of ``fmpe`` and ``npse`` (network evaluations per draw) times the draws is
    the points their network evaluated in the run; before any draw, ``nfe`` is that of one draw
    (counted without touching the global random state)."""

    def model():
        theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(theta, 0.5).to_event(1))

    torch.manual_seed(0)
    estimator = cls(model, observed=["x"], hidden=(16,), sampler=sampler, steps=5)
    state = torch.random.get_rng_state()
    per_draw = estimator.nfe
    assert torch.equal(state, torch.random.get_rng_state())
    estimator.fit(200, max_epochs=1, seed=0, progress=False)
    count = _counted_network(estimator)
    post = condgen.condition(
        model,
        {"x": torch.tensor([0.3, -0.2])},
        method=cls.label.lower(),
        estimator=estimator,
        num_samples=NUM_SAMPLES,
        progress=False,
    )
    assert count["points"] > 0
    assert post.stats["nfe"] * NUM_SAMPLES == count["points"]
    assert post.stats["nfe"] == per_draw == (11 if sampler == "heun" else 6)


def test_counter_nests_and_counts_vjps():
    """Nested counters each count; a VJP is counted once per backward pass per point, and
    nothing is counted outside an active counter."""
    network = CountingGaussianDenoiser()
    prior = DiffusionPrior(network, event_shape=(2,))
    x = torch.randn(4, 2, requires_grad=True)
    prior.denoise(x, 0.5)  # no active counter
    with EvaluationCounter() as outer:
        with EvaluationCounter() as inner:
            x0 = prior.denoise(x, 0.5)
        for _ in range(3):
            torch.autograd.grad(x0.sum(), x, retain_graph=True)
        prior.denoise(x.detach(), 0.5)
    assert (inner.evaluations, inner.vjps) == (4, 12)
    assert (outer.evaluations, outer.vjps) == (8, 12)
    assert network.vjps == 12 and network.points == 12
