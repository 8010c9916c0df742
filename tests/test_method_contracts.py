"""The contract every registered method keeps, checked for each entry of
``condgen.methods.available()`` (as zuko's tests run over every flow): draws shaped
``[chains, draws, *site]`` for every latent site, the same draws for the same seed and others for
another, an ArviZ export with the posterior, log_likelihood and observed_data groups, and a
clear error for a NaN observation or an unknown option. A method registered without a case
here fails the suite, so a new method cannot skip its contract.

Sizes are the smallest that exercise each method's code path; accuracy is tested elsewhere
against exact posteriors."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import condgen
from condgen.evaluate import GaussianLinear, GaussianMixtureInverseProblem, UnknownNoiseMixture
from condgen.priors import MLP, DiffusionPrior

NUM_SAMPLES = 24


def _mixture():
    task = GaussianMixtureInverseProblem.circle(seed=0)
    return task.model, task.data


def _joint():
    task = UnknownNoiseMixture.default()
    return task.model, task.data


def _conditional():
    torch.manual_seed(0)
    prior = DiffusionPrior(MLP(2, context=2, hidden=(16,)), event_shape=(2,))  # untrained

    def model():
        x = pyro.sample("x", prior.given(torch.tensor([1.0, 0.0])))
        pyro.sample("y", dist.Normal(x[..., :1], 0.5).to_event(1))

    return model, {"y": torch.tensor([0.3])}


def _classifier(x_t, t):
    return GaussianMixtureInverseProblem.circle().prior.component_log_probs(x_t, t)[..., 0]


_ESTIMATORS: dict = {}


def _amortized(label):
    def case():
        task = GaussianLinear(dim=2)
        if label not in _ESTIMATORS:
            cls = getattr(condgen.infer, label)
            estimator = cls(task.model, observed=["x"])
            estimator.fit(num_simulations=200, max_epochs=1, progress=False, seed=0)
            _ESTIMATORS[label] = estimator
        return task.model, task.data, {"estimator": _ESTIMATORS[label]}

    return case


def _options(case, **options):
    def build():
        model, data = case()
        return model, data, options

    return build


#: For each registered method: a model it handles, its data and the options of a small run.
CASES = {
    "nuts": _options(_mixture, num_chains=2, warmup_steps=20),
    "svi": _options(_mixture, num_steps=30),
    "importance": _options(_mixture, num_steps=30),
    "tds": _options(_mixture, steps=8),
    "smc": _options(_mixture, steps=8),
    "tempered": _options(_joint),
    "gibbs": _options(_joint, num_chains=1, warmup_steps=3, steps=5, num_particles=8),
    "dps": _options(_mixture, steps=8),
    "pigdm": _options(_mixture, steps=8),
    "classifier": _options(_mixture, steps=8, classifier=_classifier),
    "cfg": _options(_conditional, steps=8),
    "langevin": _options(_mixture, steps=8),
    "npe": _amortized("NPE"),
    "fmpe": _amortized("FMPE"),
    "npse": _amortized("NPSE"),
}

METHODS = sorted(condgen.methods.available())


def _run(method, seed=0, **extra):
    case = CASES.get(method)
    assert case is not None, f"method {method!r} is registered without a contract case"
    model, data, options = case()
    return condgen.condition(
        model,
        data,
        method=method,
        num_samples=NUM_SAMPLES,
        seed=seed,
        progress=False,
        **options,
        **extra,
    )


@pytest.mark.filterwarnings("ignore:Pareto k-hat")
@pytest.mark.parametrize("method", METHODS)
def test_draws_and_arviz_export(method):
    post = _run(method)
    problem = post.problem
    for name, site in problem.latent_sites.items():
        draws = post.samples[name]
        assert draws.shape[2:] == site.shape, (method, name)
        assert draws.shape[0] * draws.shape[1] >= NUM_SAMPLES
        assert bool(torch.isfinite(draws).all())
    idata = post.to_arviz()
    assert {"posterior", "log_likelihood", "observed_data"} <= set(idata.groups())
    for name in problem.observed_sites:
        values = idata.log_likelihood[name].values
        assert values.shape[:2] == tuple(post.samples[next(iter(post.samples))].shape[:2])
        assert np.isfinite(values).all()
    assert post.method == method and post.stats["time_s"] > 0


@pytest.mark.filterwarnings("ignore:Pareto k-hat")
@pytest.mark.parametrize("method", METHODS)
def test_a_seed_reproduces_the_draws(method):
    a, b, c = (_run(method, seed=s).samples for s in (3, 3, 4))
    for name in a:
        assert torch.equal(a[name], b[name]), (method, name)
    assert any(not torch.equal(a[name], c[name]) for name in a), method


@pytest.mark.parametrize("method", METHODS)
def test_bad_input_names_the_site_or_option(method):
    model, data, options = CASES[method]()
    (name, value), *_ = data.items()
    broken = {**data, name: torch.full_like(torch.as_tensor(value), math.nan)}
    with pytest.raises(ValueError, match=rf"'{name}'.*(NaN|nan)|(NaN|nan).*'{name}'"):
        condgen.condition(model, broken, method=method, progress=False, **options)
    with pytest.raises(ValueError, match="'stepz'"):
        condgen.condition(model, data, method=method, progress=False, stepz=3, **options)
