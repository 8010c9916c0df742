r"""Pyro's autoguide test suite (``tests/infer/test_autoguide.py``, Apache-2.0), rewritten for
condgen's guides, with Pyro's :class:`~pyro.infer.autoguide.AutoMultivariateNormal` as the
control that shows each test is right.

Each case is parametrised over the control, :class:`~condgen.guides.FlowGuide` (a small NSF
with a lower-triangular affine layer) and, where the case applies, the semi-implicit and
implicit guides. Pyro's models, step counts, learning rates, particle numbers and tolerances
are kept.

Cases of Pyro's suite left out, and why:

* ``test_init_scale`` reads ``guide._loc_scale()``, a Gaussian guide's internals; a flow has no
  location-scale pair.
* ``test_quantiles``' sub-check ``0.5 (q_{0.8413} - q_{0.1587}) = sd`` to ``atol=1e-6`` holds
  for a Gaussian only. For :class:`FlowGuide` it is checked to 0.05 instead: the fitted flow's
  ``x`` marginal is near but not exactly normal (measured: sd 0.9876, half-width 0.9863).
* None of the exact cases is left out. Their :class:`FlowGuide` is
  :func:`exact_flow_guide` (the default NSF, ``scale_tril=True``, ``path_derivative=True``,
  ``init_scale=1.0``): with the total gradient, the flow's hyper-network weights keep taking
  Adam steps of about the learning rate on gradient noise that has zero mean at the exact
  posterior, and the 100-particle ELBO misses its 0.01 tolerance at some seeds; the path
  derivative is zero at an exact fit. Pyro's own file with this guide, run at seeds 0-4:
  ``docs/benchmarks.md``, "Pyro's autoguide suite".
* ``test_iplate_smoke`` is ``xfail`` in Pyro (sequential plates); the subsample, Messenger
  and AutoNormal-only tests (``test_subsample_*``, ``test_autonormal_dynamic_model``,
  ``test_unpack_latent``, ``test_empty_model_error``, ``test_sphere_raw_ok``) do not involve
  ``AutoMultivariateNormal``.

Where the other guides apply:

* :class:`~condgen.guides.SemiImplicitGuide` has a Monte Carlo log-density, so Pyro's ELBOs run
  on it (biased); it is in the structural cases (scores, factor, shapes, guide lists, replay,
  errors, serialization). It has no ``median``/``quantiles`` (its ``AutoContinuous`` ones need
  a location-scale pair), so the median, quantile, init and exact cases do not apply.
* :class:`~condgen.guides.ImplicitGuide` has no density: Pyro's ELBOs raise on it by design
  (it trains with ``AdversarialELBO``), so only the cases that draw without an ELBO apply
  (guide lists, callables, replay, helpful errors, serialization).
* The amortized guides (``AmortizedNormal``, ``AmortizedFlowGuide`` and the amortized
  semi-implicit and implicit guides) need a data plate whose observations feed an encoder;
  none of Pyro's models but the exact ones has one, and those are covered by
  ``tests/test_guides.py::test_amortized_guides_on_a_conjugate_model``.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import (
    SVI,
    JitTrace_ELBO,
    JitTraceEnum_ELBO,
    JitTraceGraph_ELBO,
    Predictive,
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceGraph_ELBO,
)
from pyro.infer.autoguide import (
    AutoDelta,
    AutoDiscreteParallel,
    AutoGuideList,
    AutoMultivariateNormal,
    init_to_feasible,
    init_to_mean,
    init_to_median,
    init_to_sample,
)
from pyro.infer.reparam import ProjectedNormalReparam
from pyro.nn.module import PyroModule, PyroParam, PyroSample
from pyro.optim import Adam, ClippedAdam
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_model_guide_match
from torch import Tensor, nn
from torch.distributions import constraints

from condgen.guides import FlowGuide, ImplicitGuide, SemiImplicitGuide

# ------------------------------------------------------------------------------------ guides


def flow_guide(model: Callable, **kwargs) -> FlowGuide:
    r"""The flow guide under test: one NSF transformation, a lower-triangular affine layer."""
    return FlowGuide(
        model, "nsf", transforms=1, hidden_features=(16, 16), scale_tril=True, **kwargs
    )


def exact_flow_guide(model: Callable, **kwargs) -> FlowGuide:
    r"""The flow guide of the exact cases, as ``benchmarks/pyro_autoguide_suite.py`` puts it in
    place of ``AutoMultivariateNormal``: the default NSF, a lower-triangular affine layer, the
    path-derivative gradient, started at the prior's scale."""
    return FlowGuide(model, scale_tril=True, path_derivative=True, init_scale=1.0, **kwargs)


def semi_implicit_guide(model: Callable, **kwargs) -> SemiImplicitGuide:
    return SemiImplicitGuide(model, noise_dim=2, hidden=(16,), components=2, num_inner=8, **kwargs)


def implicit_guide(model: Callable, **kwargs) -> ImplicitGuide:
    return ImplicitGuide(model, hidden=(16,), **kwargs)


MVN = pytest.param(AutoMultivariateNormal, id="mvn")
FLOW = pytest.param(flow_guide, id="flow")
SEMI = pytest.param(semi_implicit_guide, id="semi_implicit")
IMPLICIT = pytest.param(implicit_guide, id="implicit")
GAUSSIAN_AND_FLOW = [MVN, FLOW]
GAUSSIAN_AND_EXACT_FLOW = [MVN, pytest.param(exact_flow_guide, id="flow")]
WITH_DENSITY = [MVN, FLOW, SEMI]
ALL_GUIDES = [MVN, FLOW, SEMI, IMPLICIT]
INIT_FNS = [init_to_feasible, init_to_mean, init_to_median, init_to_sample]
ELBOS = [Trace_ELBO, TraceGraph_ELBO, TraceEnum_ELBO]


@pytest.fixture(autouse=True)
def _fresh_state():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*was not registered in the param store.*")
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated.*")
        yield
    torch.set_num_threads(threads)
    pyro.clear_param_store()


def close(actual, expected, atol: float = 0.0, rtol: float = 0.0, msg: str = "") -> None:
    r"""Asserts :math:`|a - e| \le \mathrm{atol} + \mathrm{rtol} |e|` element-wise (Pyro's
    ``assert_close``; its ``assert_equal`` is ``atol=1e-5``)."""
    actual, expected = torch.as_tensor(actual).double(), torch.as_tensor(expected).double()
    bound = atol + rtol * expected.abs()
    error = (actual - expected).abs()
    assert (error <= bound).all(), f"{msg} {actual} vs {expected} (error {error.max():.3g})"


# ------------------------------------------------------------------------------ structural


@pytest.mark.parametrize("make_guide", WITH_DENSITY)
def test_scores(make_guide):
    def model():
        pyro.sample("z", dist.Normal(0.0, 1.0))

    guide = make_guide(model)
    guide_trace = poutine.trace(guide).get_trace()
    model_trace = poutine.trace(poutine.replay(model, guide_trace)).get_trace()
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    latent = f"_{type(guide).__name__}_latent"
    assert latent not in model_trace.nodes
    assert guide_trace.nodes[latent]["log_prob_sum"].item() != 0.0
    assert model_trace.nodes["z"]["log_prob_sum"].item() != 0.0
    assert guide_trace.nodes["z"]["log_prob_sum"].item() == 0.0


@pytest.mark.parametrize("Elbo", ELBOS)
@pytest.mark.parametrize("make_guide", WITH_DENSITY)
def test_factor(make_guide, Elbo):
    def model(log_factor):
        pyro.sample("z1", dist.Normal(0.0, 1.0))
        pyro.factor("f1", log_factor)
        pyro.sample("z2", dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1))
        with pyro.plate("plate", 3):
            pyro.factor("f2", log_factor)
            pyro.sample("z3", dist.Normal(torch.zeros(3), torch.ones(3)))

    guide = make_guide(model)
    elbo = Elbo(strict_enumeration_warning=False)
    elbo.loss(model, guide, torch.tensor(0.0))  # sets the guide up
    pyro.set_rng_seed(123)
    loss_5 = elbo.loss(model, guide, torch.tensor(5.0))
    pyro.set_rng_seed(123)
    loss_4 = elbo.loss(model, guide, torch.tensor(4.0))
    close(loss_5 - loss_4, -1 - 3, atol=1e-5)


def shapes_model():
    pyro.sample("z1", dist.Normal(0.0, 1.0))
    pyro.sample("z2", dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1))
    with pyro.plate("plate", 3):
        pyro.sample("z3", dist.Normal(torch.zeros(3), torch.ones(3)))
    pyro.sample("z4", dist.MultivariateNormal(torch.zeros(2), torch.eye(2)))
    pyro.sample("z5", dist.Dirichlet(torch.ones(3)))
    mask = torch.arange(2) > 0
    pyro.sample("z6", dist.Normal(0, 1).expand((2,)).mask(mask).to_event(1))
    pyro.sample("z7", dist.LKJCholesky(2, torch.tensor(1.0)))


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("num_particles", [1, 10])
@pytest.mark.parametrize("Elbo", ELBOS)
@pytest.mark.parametrize("init_loc_fn", INIT_FNS)
@pytest.mark.parametrize("make_guide", WITH_DENSITY)
def test_shapes(make_guide, init_loc_fn, Elbo, num_particles):
    guide = make_guide(shapes_model, init_loc_fn=init_loc_fn)
    elbo = Elbo(
        num_particles=num_particles, vectorize_particles=True, strict_enumeration_warning=False
    )
    loss = elbo.loss(shapes_model, guide)
    assert np.isfinite(loss), loss


@pytest.mark.parametrize("make_guide", [IMPLICIT])
def test_shapes_implicit_draws(make_guide):
    # the implicit guide's counterpart of test_shapes: draws of every support, no ELBO
    guide = make_guide(shapes_model)
    with pyro.plate("particles", 10, dim=-2):
        values = guide()
    assert values["z5"].shape[-1] == 3 and values["z7"].shape[-2:] == (2, 2)
    assert all(torch.isfinite(v).all() for v in values.values())


@pytest.mark.parametrize("make_guide", [IMPLICIT])
def test_implicit_guide_refuses_pyro_elbo(make_guide):
    def model():
        pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(NotImplementedError, match="AdversarialELBO"):
        Trace_ELBO().loss(model, make_guide(model))


@pytest.mark.parametrize("make_guide", WITH_DENSITY)
def test_discrete_parallel(make_guide):
    data = torch.tensor([0.0, 1.0, 10.0, 11.0, 12.0])

    def model(data):
        weights = pyro.sample("weights", dist.Dirichlet(0.5 * torch.ones(2)))
        locs = pyro.sample("locs", dist.Normal(0, 10).expand_by([2]).to_event(1))
        scale = pyro.sample("scale", dist.LogNormal(0, 1))
        with pyro.plate("data", len(data)):
            weights = weights.expand(torch.Size((len(data),)) + weights.shape)
            assignment = pyro.sample("assignment", dist.Categorical(weights))
            pyro.sample("obs", dist.Normal(locs[assignment], scale), obs=data)

    guide = AutoGuideList(model)
    guide.append(make_guide(poutine.block(model, hide=["assignment"])))
    guide.append(AutoDiscreteParallel(poutine.block(model, expose=["assignment"])))
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss_and_grads(model, guide, data)
    assert np.isfinite(loss), loss


def two_site_model():
    pyro.sample("x", dist.Normal(0.0, 1.0))
    pyro.sample("y", dist.MultivariateNormal(torch.zeros(5), torch.eye(5, 5)))


@pytest.mark.parametrize("make_guide", ALL_GUIDES)
def test_guide_list(make_guide):
    def model():
        pyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        pyro.sample("y", dist.MultivariateNormal(torch.zeros(5), torch.eye(5, 5)))

    guide = AutoGuideList(model)
    guide.append(make_guide(poutine.block(model, expose=["x"])))
    guide.append(make_guide(poutine.block(model, expose=["y"])))
    values = guide()
    assert values["x"].shape == (2,) and values["y"].shape == (5,)


@pytest.mark.parametrize("return_dict", [False, True], ids=["callable", "callable_return_dict"])
@pytest.mark.parametrize("make_guide", ALL_GUIDES)
def test_callable(make_guide, return_dict):
    def guide_x():
        x_loc = pyro.param("x_loc", torch.tensor(0.0))
        x = pyro.sample("x", dist.Delta(x_loc))
        return {"x": x} if return_dict else None

    guide = AutoGuideList(two_site_model)
    guide.append(guide_x)
    guide.append(make_guide(poutine.block(two_site_model, expose=["y"])))
    values = guide()
    assert set(values) == ({"x", "y"} if return_dict else {"y"})


@pytest.mark.parametrize("sample_shape", [(), (6,), (5, 4)], ids=str)
@pytest.mark.parametrize("make_guide", ALL_GUIDES)
def test_replay_plates(make_guide, sample_shape):
    def model():
        a = pyro.sample("a", dist.Normal(0, 1))
        b = pyro.sample("b", dist.Normal(a[..., None], torch.ones(3)).to_event(1))
        c = pyro.sample("c", dist.MultivariateNormal(torch.zeros(3) + a[..., None], torch.eye(3)))
        with pyro.plate("i", 2):
            d = pyro.sample("d", dist.Dirichlet((b + c).exp()))
            pyro.sample("e", dist.Categorical(logits=d), obs=torch.tensor([0, 0]))
        return a, b, c, d

    guide = make_guide(model)
    with pyro.plate_stack("particles", sample_shape, rightmost_dim=-2):
        guide_trace = poutine.trace(guide).get_trace()
        a, b, c, d = poutine.replay(model, guide_trace)()
    lead = (*sample_shape, 1) if sample_shape else ()
    assert a.shape == lead
    assert b.shape == (*lead, 3) and c.shape == (*lead, 3)
    assert d.shape == (*sample_shape, 2, 3)


@pytest.mark.parametrize("init_loc_fn", INIT_FNS)
@pytest.mark.parametrize("make_guide", ALL_GUIDES)
def test_discrete_helpful_error(make_guide, init_loc_fn):
    def model():
        p = pyro.sample("p", dist.Beta(2.0, 2.0))
        x = pyro.sample("x", dist.Bernoulli(p))
        obs = torch.tensor([1.0, 0.0])
        pyro.sample("obs", dist.Bernoulli(p * x + (1 - p) * (1 - x)), obs=obs)

    guide = make_guide(model, init_loc_fn=init_loc_fn)
    with pytest.raises(ValueError, match=r"enumeration\.html"):
        guide()


@pytest.mark.parametrize("init_loc_fn", INIT_FNS)
@pytest.mark.parametrize("make_guide", ALL_GUIDES)
def test_sphere_helpful_error(make_guide, init_loc_fn):
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        y = pyro.sample("y", dist.ProjectedNormal(x))
        pyro.sample("obs", dist.Normal(y, 1), obs=torch.tensor([1.0, 0.0]))

    guide = make_guide(model, init_loc_fn=init_loc_fn)
    with pytest.raises(ValueError, match="ProjectedNormalReparam"):
        guide()


@pytest.mark.parametrize("make_guide", ALL_GUIDES)
def test_sphere_reparam_ok(make_guide):
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        y = pyro.sample("y", dist.ProjectedNormal(x))
        obs = torch.tensor([1.0, 0.0, 0.0])
        pyro.sample("obs", dist.Normal(y, 1).to_event(1), obs=obs)

    model = poutine.reparam(model, {"y": ProjectedNormalReparam()})
    guide_trace = poutine.trace(make_guide(model)).get_trace()
    model_trace = poutine.trace(poutine.replay(model, guide_trace)).get_trace()
    model_trace.compute_log_prob()
    # the guide draws the reparametrised site's unconstrained auxiliary, the model maps it to
    # the sphere, and the joint density of the draw is finite
    assert "y" not in guide_trace.stochastic_nodes
    close(model_trace.nodes["y"]["value"].norm(), 1.0, atol=1e-5)
    assert torch.isfinite(model_trace.log_prob_sum())


class RandomLinear(nn.Linear, PyroModule):
    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features)
        self.weight = PyroSample(
            dist.Normal(0.0, 1.0).expand([out_features, in_features]).to_event(2)
        )
        self.bias = PyroSample(dist.Normal(0.0, 10.0).expand([out_features]).to_event(1))


class LinearRegression(PyroModule):
    def __init__(self, features: int, size: int):
        super().__init__()
        self.linear = RandomLinear(features, 1)
        self.size = size

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        mean = self.linear(x).squeeze(-1)
        sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
        with pyro.plate("plate", self.size):
            return pyro.sample("obs", dist.Normal(mean, sigma), obs=y)


@pytest.mark.parametrize("Elbo", ELBOS)
@pytest.mark.parametrize("make_guide", WITH_DENSITY)
def test_linear_regression_smoke(make_guide, Elbo):
    x, y = torch.randn(10, 3), torch.randn(10)
    model = LinearRegression(3, 10)
    guide = make_guide(model)
    svi = SVI(model, guide, Adam({"lr": 0.005}), Elbo(strict_enumeration_warning=False))
    assert np.isfinite(svi.step(x, y))


@pytest.mark.parametrize("make_guide", ALL_GUIDES)
def test_predictive(make_guide):
    x, y = torch.randn(3, 2), torch.randn(3)
    model = LinearRegression(2, 3)
    guide = make_guide(model)
    guide(x, y=y)  # the prototype trace records y as observed
    model_trace = poutine.trace(model).get_trace(x, y=None)
    predictive = Predictive(model, guide=guide, num_samples=10)
    pyro.set_rng_seed(0)
    samples = predictive(x)
    for site in prune_subsample_sites(model_trace).stochastic_nodes:
        assert site in samples
    traced = torch.jit.trace_module(predictive, {"call": (x,)})
    f = io.BytesIO()
    torch.jit.save(traced, f)
    f.seek(0)
    loaded = torch.jit.load(f)
    pyro.set_rng_seed(0)
    assert len(loaded.call(x)) == len(samples)


def serialization_model():
    pyro.sample("x", dist.Normal(0.0, 1.0))
    with pyro.plate("plate", 2):
        pyro.sample("y", dist.LogNormal(0.0, 1.0))
        pyro.sample("z", dist.Beta(2.0, 2.0))


@pytest.mark.parametrize("how", ["pickle", "jit", "state_dict"])
@pytest.mark.parametrize("make_guide", ALL_GUIDES)
def test_serialization(make_guide, how):
    guide = make_guide(serialization_model)
    guide()
    pyro.set_rng_seed(0)
    expected = guide.call()
    names = sorted(guide())
    expected_params = {k: v.detach().clone() for k, v in guide.named_parameters()}
    f = io.BytesIO()
    if how == "jit":
        traced = torch.jit.trace_module(guide, {"call": ()}, check_trace=False)
        torch.jit.save(traced, f)
        del guide, traced
        pyro.clear_param_store()
        f.seek(0)
        loaded = torch.jit.load(f)
    elif how == "pickle":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning)
            torch.save(guide, f)
        f.seek(0)
        loaded = torch.load(f, weights_only=False)
    else:
        torch.save(guide.state_dict(), f)
        del guide
        pyro.clear_param_store()
        f.seek(0)
        loaded = make_guide(serialization_model)
        pyro.set_rng_seed(1)  # a different initial point: the state dict must overwrite it
        loaded()
        loaded.load_state_dict(torch.load(f))
    pyro.set_rng_seed(0)
    actual = loaded.call()
    assert len(actual) == len(expected)
    for name, a, e in zip(names, actual, expected, strict=True):
        close(a, e, atol=1e-5, msg=name)
    actual_params = {k: v.data for k, v in loaded.named_parameters()}
    assert set(actual_params) == set(expected_params)
    for name, value in expected_params.items():
        close(actual_params[name], value, atol=1e-5, msg=name)


# --------------------------------------------------------------------- medians and quantiles


@pytest.mark.parametrize("Elbo", [JitTrace_ELBO, JitTraceGraph_ELBO, JitTraceEnum_ELBO])
@pytest.mark.parametrize("make_guide", GAUSSIAN_AND_FLOW)
def test_median(make_guide, Elbo):
    def model():
        pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.LogNormal(0.0, 1.0))
        pyro.sample("z", dist.Beta(2.0, 2.0))

    guide = make_guide(model)
    elbo = Elbo(
        strict_enumeration_warning=False,
        num_particles=500,
        vectorize_particles=True,
        ignore_jit_warnings=True,
    )
    svi = SVI(model, guide, Adam({"lr": 0.02, "betas": (0.8, 0.99)}), elbo)
    for _ in range(100):
        svi.step()
    median = guide.median()
    close(median["x"], 0.0, atol=0.1)
    close(median["y"], 1.0, atol=0.1)
    close(median["z"], 0.5, atol=0.1)


@pytest.mark.parametrize("Elbo", ELBOS)
@pytest.mark.parametrize("make_guide", GAUSSIAN_AND_FLOW)
def test_quantiles(make_guide, Elbo):
    def model():
        pyro.sample("y", dist.LogNormal(0.0, 1.0))
        pyro.sample("z", dist.Beta(2.0, 2.0).expand([2]).to_event(1))
        pyro.sample("x", dist.Normal(0.0, 1.0))

    guide = make_guide(model)
    elbo = Elbo(strict_enumeration_warning=False, num_particles=100, vectorize_particles=True)
    svi = SVI(model, guide, Adam({"lr": 0.05, "betas": (0.8, 0.99)}), elbo)
    for _ in range(100):
        svi.step()

    # x is the last coordinate, and unconstrained: a central 68.27% interval is 2 sd wide
    # for a Gaussian (exactly), for the flow's near-Gaussian marginal to 0.05 (see the top)
    posterior_sd = guide.get_posterior().variance[-1].sqrt()
    q = guide.quantiles([0.158655, 0.8413447])
    atol = 1e-6 if make_guide is AutoMultivariateNormal else 0.05
    close(0.5 * (q["x"][1] - q["x"][0]), posterior_sd, atol=atol)

    quantiles = guide.quantiles([0.1, 0.5, 0.9])
    median = guide.median()
    for name in ["x", "y", "z"]:
        assert not median[name].requires_grad
        assert torch.is_tensor(quantiles[name]) and len(quantiles[name]) == 3
        for value in quantiles[name]:
            assert not value.requires_grad
            assert value.shape == (() if name != "z" else (2,))
        close(median[name], quantiles[name][1], atol=1e-5)

    x, y, z = quantiles["x"], quantiles["y"], quantiles["z"]
    assert x[0] > -3.0 and x[0] + 1.0 < x[1] and x[1] + 1.0 < x[2] and x[2] < 3.0
    assert y[0] > 0.01 and y[0] * 2.0 < y[1] and y[1] * 2.0 < y[2] and y[2] < 100.0
    assert (z[0] > 0.01).all() and (z[0] + 0.1 < z[1]).all()
    assert (z[1] + 0.1 < z[2]).all() and (z[2] < 0.99).all()


def test_flow_median_and_quantiles_are_deterministic():
    guide = flow_guide(two_site_model)
    guide()
    state = torch.get_rng_state()
    first, second = guide.quantiles([0.2, 0.5]), guide.quantiles([0.2, 0.5])
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left alone
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert all(torch.equal(guide.median()[k], first[k][1]) for k in first)


@pytest.mark.parametrize("make_guide", GAUSSIAN_AND_FLOW)
def test_init_loc_fn(make_guide):
    inits = {"x": torch.randn(()), "y": torch.randn(5)}

    def init_loc_fn(site):
        return inits[site["name"]]

    guide = make_guide(two_site_model, init_loc_fn=init_loc_fn)
    guide()
    median = guide.median()
    close(median["x"], inits["x"], atol=1e-5)
    close(median["y"], inits["y"], atol=1e-5)


class MedianModel(PyroModule):
    def __init__(self):
        super().__init__()
        self.x_loc = nn.Parameter(torch.tensor(1.0))
        self.x_scale = PyroParam(torch.tensor(0.1), constraints.positive)

    def forward(self):
        x = pyro.sample("x", dist.Normal(self.x_loc, self.x_scale))
        pyro.sample("y", dist.Normal(2.0, 0.1))
        pyro.sample("z", dist.Normal(1.0, 0.1), obs=x)


@pytest.mark.parametrize("Elbo", ELBOS)
@pytest.mark.parametrize("make_guide", GAUSSIAN_AND_FLOW)
def test_median_module(make_guide, Elbo):
    model = MedianModel()
    guide = make_guide(model)
    svi = SVI(model, guide, Adam({"lr": 0.005}), Elbo(strict_enumeration_warning=False))
    for _ in range(20):
        svi.step()
    median = guide.median()
    close(median["x"].detach(), 1.0, atol=0.1)
    close(median["y"].detach(), 2.0, atol=0.1)


@pytest.mark.parametrize("Elbo", ELBOS)
@pytest.mark.parametrize("make_guide", WITH_DENSITY)
def test_nested_autoguide(make_guide, Elbo):
    class Model(PyroModule):
        def __init__(self):
            super().__init__()
            self.x_loc = nn.Parameter(torch.tensor(1.0))
            self.x_scale = PyroParam(torch.tensor(0.1), constraints.positive)

        def forward(self):
            pyro.sample("x", dist.Normal(self.x_loc, self.x_scale))
            with pyro.plate("plate", 2):
                pyro.sample("y", dist.Normal(2.0, 0.1))

    model = Model()
    guide = AutoGuideList(model)
    guide.append(AutoDelta(poutine.block(model, expose=["x"])))
    inner = AutoGuideList(poutine.block(model, expose=["y"]))
    inner.z = make_guide(poutine.block(model, expose=["y"]))  # Pyro nests an AutoIAFNormal
    guide.append(inner)
    for _, module in guide.named_modules():
        if module is not guide:
            assert module.master is not None and module.master() is guide

    svi = SVI(model, guide, Adam({"lr": 0.005}), Elbo(strict_enumeration_warning=False))
    for _ in range(20):
        svi.step()
    guide_trace = poutine.trace(guide).get_trace()
    check_model_guide_match(poutine.trace(model).get_trace(), guide_trace)
    assert all(
        p.startswith("AutoGuideList.0") or p.startswith("AutoGuideList.1.z")
        for p in guide_trace.param_nodes
    )
    stochastic = set(guide_trace.stochastic_nodes)
    assert {"x", "y", "_AutoGuideList.1.z_latent"} <= stochastic


# ------------------------------------------------------------------ exact conjugate posteriors


def gaussian_posterior(
    prior_cov: Tensor, design: Tensor, data: Tensor
) -> tuple[Tensor, Tensor, float]:
    r"""The exact posterior of :math:`z \sim \mathcal{N}(0, S)`, :math:`y \mid z \sim
    \mathcal{N}(A z, I)`: mean :math:`P^{-1} A^\top y` and standard deviations
    :math:`\sqrt{\mathrm{diag}\, P^{-1}}` with :math:`P = S^{-1} + A^\top A`, and the negative
    log evidence :math:`-\log \mathcal{N}(y \mid 0, A S A^\top + I)`, the loss of an exact
    guide."""
    prior_cov, design, data = prior_cov.double(), design.double(), data.double()
    cov = torch.linalg.inv(torch.linalg.inv(prior_cov) + design.T @ design)
    mean = cov @ design.T @ data
    marginal = design @ prior_cov @ design.T + torch.eye(len(data), dtype=data.dtype)
    residual = torch.linalg.solve(marginal, data)
    log_evidence = -0.5 * (
        data @ residual + torch.logdet(marginal) + len(data) * math.log(2 * math.pi)
    )
    return mean.float(), cov.diagonal().sqrt().float(), -float(log_evidence)


def fit_exact(make_guide: Callable, model: Callable, data: Tensor) -> tuple[Callable, object]:
    r"""Pyro's fit of the exact tests: 500 ClippedAdam steps from 0.05 down to 0.005, 100
    vectorised particles (jit for both guides)."""
    guide = make_guide(model)
    elbo = JitTrace_ELBO(num_particles=100, vectorize_particles=True, ignore_jit_warnings=True)
    num_steps = 500
    optim = ClippedAdam({"lr": 0.05, "lrd": 0.1 ** (1 / num_steps)})
    svi = SVI(model, guide, optim, elbo)
    for _ in range(num_steps):
        svi.step(data)
    guide.train(False)
    guide.requires_grad_(False)
    return guide, elbo


def draw(guide, model, data: Tensor, num: int):
    with torch.no_grad():
        particles = pyro.plate("particles", num, dim=-2)
        guide_trace = poutine.trace(particles(guide)).get_trace(data)
        return poutine.replay(particles(model), guide_trace)(data)


@pytest.mark.parametrize("make_guide", GAUSSIAN_AND_EXACT_FLOW)
def test_exact(make_guide):
    def model(data):
        loc = pyro.sample("loc", dist.Normal(0, 1))
        with pyro.plate("data", len(data)):
            pyro.sample("obs", dist.Normal(loc, 1), obs=data)
        return loc

    data = torch.randn(3)
    mean, sd, loss = gaussian_posterior(torch.eye(1), torch.ones(3, 1), data)
    close(mean, data.sum() / 4, atol=1e-6)  # (0 + sum y) / (1 + n), sd (1 + n)^(-1/2)
    close(sd, 0.5, atol=1e-6)
    guide, elbo = fit_exact(make_guide, model, data)
    samples = draw(guide, model, data, 10000)
    close(samples.mean(), mean[0], atol=0.05)
    close(samples.std(), sd[0], rtol=0.05)
    with torch.no_grad():
        close(elbo.loss(model, guide, data), loss, atol=0.01)


@pytest.mark.parametrize("make_guide", GAUSSIAN_AND_EXACT_FLOW)
def test_exact_batch(make_guide):
    def model(data):
        with pyro.plate("data", len(data)):
            loc = pyro.sample("loc", dist.Normal(0, 1))
            pyro.sample("obs", dist.Normal(loc, 1), obs=data)
        return loc

    data = torch.randn(3)
    mean, sd, loss = gaussian_posterior(torch.eye(3), torch.eye(3), data)
    guide, elbo = fit_exact(make_guide, model, data)
    samples = draw(guide, model, data, 10000)
    close(samples.mean(0), mean, atol=0.05)
    close(samples.std(0), sd, rtol=0.05)
    with torch.no_grad():
        close(elbo.loss(model, guide, data), loss, atol=0.01)


@pytest.mark.parametrize("make_guide", GAUSSIAN_AND_EXACT_FLOW)
def test_exact_tree(make_guide):
    def model(data):
        x = pyro.sample("x", dist.Normal(0, 1))
        with pyro.plate("data", len(data)):
            y = pyro.sample("y", dist.Normal(x, 1))
            pyro.sample("obs", dist.Normal(y, 1), obs=data)
        return {"x": x, "y": y}

    data = torch.randn(2)
    # (x, y0, y1) = L eta, eta ~ N(0, I), observed through (y0, y1)
    root = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    design = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    mean, sd, loss = gaussian_posterior(root @ root.T, design, data)
    guide, elbo = fit_exact(make_guide, model, data)
    samples = draw(guide, model, data, 50000)
    for name, index in [("x", slice(0, 1)), ("y", slice(1, 3))]:
        close(samples[name].mean(0).squeeze(), mean[index].squeeze(), atol=0.05)
        close(samples[name].std(0).squeeze(), sd[index].squeeze(), rtol=0.05)
    with torch.no_grad():
        close(elbo.loss(model, guide, data), loss, atol=0.01)
