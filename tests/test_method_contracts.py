"""The contract every registered method keeps, checked for each entry of
``condgen.methods.available()`` (as zuko's tests run over every flow): draws shaped
``[chains, draws, *site]`` for every latent site, the same draws for the same seed and others for
another, an ArviZ export with the posterior, log_likelihood and observed_data groups, and a
clear error for a NaN observation or an unknown option (condition's shared checks), for an
option value the method refuses and for a model it cannot handle (the method's own checks). A
method registered without a case here fails the suite, so a new method cannot skip its
contract.

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


# The NaN observation and the unknown option above are refused by condition's shared checks,
# before any method code runs. The cases below reach each method's own validation: an option
# with a valid name but a value the method refuses, and a model it cannot handle (whose error
# names the site). Both fail before any sampling, so they are fast.


def _discrete():
    k = pyro.sample("k", dist.Bernoulli(0.5))
    pyro.sample("y", dist.Normal(k, 1.0))
    return None


def _no_path_prior():
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    pyro.sample("y", dist.Normal(z, 1.0))


def _path_prior_and_another_site():
    prior = GaussianMixtureInverseProblem.circle(seed=0).prior
    x = pyro.sample("x", prior)
    s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
    pyro.sample("y", dist.Normal(x[..., :1], s.unsqueeze(-1)).to_event(1))


_Y = {"y": torch.tensor(0.3)}
_Y1 = {"y": torch.tensor([0.3])}
_WRONG_ROWS = condgen.likelihoods.LinearGaussian(torch.ones(3, 2), 0.5)

#: For each method: an option value its own code refuses, and the message it must give.
BAD_OPTIONS = {
    "nuts": ({"num_chains": 0}, "num_chains must be >= 1"),
    "svi": ({"lr_decay": 2.0}, "lr_decay"),
    "importance": ({"proposal": "uniform"}, "proposal must be 'guide' or 'prior'"),
    "tds": ({"twist_schedule": "linear"}, "twist_schedule must be 'snr' or 'constant'"),
    "smc": ({"moment_samples": 1}, "moment_samples must be at least 2"),
    "tempered": ({"target_ess": 1.5}, r"target_ess must lie in \(0, 1\)"),
    "gibbs": ({"kernel": "mala"}, "kernel must be 'nuts' or 'hmc'"),
    "dps": ({"sampler": "rk4"}, "unknown sampler 'rk4'"),
    "pigdm": ({"linear": _WRONG_ROWS}, "linear.A has 3 rows"),
    "classifier": ({"classifier": None}, "needs classifier=callable"),
    "cfg": ({"sampler": "heun", "eta": 0.5}, "eta sets the noise of 'ddim' and 'ddpm'"),
    "langevin": ({"snr": -1.0}, "snr > 0"),
    "npe": ({"estimator": "npe.pt"}, "estimator must be a condgen.infer.NPE"),
    "fmpe": ({"estimator": None}, "method 'fmpe' needs a trained estimator"),
    "npse": ({"estimator": "npse.pt"}, "estimator must be a condgen.infer.NPSE"),
}

#: For each method: a model it cannot handle, its data, and the message, which names the site.
UNHANDLED_MODELS = {
    "nuts": (_discrete, _Y, "method 'nuts' needs continuous latent sites, but site 'k'"),
    "svi": (_discrete, _Y, "method 'svi' needs continuous latent sites, but site 'k'"),
    # importance fits its proposal by SVI first, whose check names the site
    "importance": (
        _discrete,
        _Y,
        "method 'importance' with proposal='guide' needs continuous latent sites, but site 'k'"
        r".*use proposal='prior'",
    ),
    "tds": (
        _no_path_prior,
        _Y,
        r"method 'tds' needs a latent site with a condgen path prior.*'z'",
    ),
    "smc": (_discrete, _Y, "method 'smc' needs continuous latent sites, but site 'k'"),
    "tempered": (_discrete, _Y, "method 'tempered' needs continuous latent sites, but site 'k'"),
    "gibbs": (_no_path_prior, _Y, r"method 'gibbs' needs a latent site with .*'z'"),
    "dps": (_path_prior_and_another_site, _Y1, r"'x' alone.*\['s'\].*method='gibbs'"),
    "pigdm": (_no_path_prior, _Y, r"method 'pigdm' needs a latent site with .*'z'"),
    "classifier": (_path_prior_and_another_site, _Y1, r"'x' alone.*\['s'\]"),
    "cfg": (
        _mixture,
        None,
        "method 'cfg' needs a conditional prior bound to a context at site 'x'",
    ),
    "langevin": (_no_path_prior, _Y, r"method 'langevin' needs a latent site with .*'z'"),
    # an estimator trained on another model: GaussianLinear observes 'x', these models 'y'
    "npe": (_no_path_prior, _Y, r"trained to condition on the sites \['x'\].*observe \['y'\]"),
    "fmpe": (_discrete, _Y, r"trained to condition on the sites \['x'\].*observe \['y'\]"),
    "npse": (_no_path_prior, _Y, r"trained to condition on the sites \['x'\].*observe \['y'\]"),
}


@pytest.mark.parametrize("method", METHODS)
def test_the_method_refuses_a_bad_option_value(method):
    model, data, options = CASES[method]()
    assert method in BAD_OPTIONS, f"method {method!r} has no bad-option case"
    bad, message = BAD_OPTIONS[method]
    with pytest.raises(ValueError, match=message):
        condgen.condition(model, data, method=method, progress=False, **{**options, **bad})


@pytest.mark.parametrize("method", METHODS)
def test_the_method_refuses_a_model_it_cannot_handle(method):
    _, _, options = CASES[method]()
    assert method in UNHANDLED_MODELS, f"method {method!r} has no unhandled-model case"
    model, data, message = UNHANDLED_MODELS[method]
    if data is None:  # the case's own model builder
        model, data = model()
    with pytest.raises(ValueError, match=message):
        condgen.condition(model, data, method=method, num_samples=8, progress=False, **options)
