"""Bad input at the public entry points gets a clear error naming the argument or site, and
input a Pyro user would expect to work (NumPy counts, lists, float64 models) works.

The dtype tests run one method of every family end to end in float32 and float64 on a
Gaussian prior with a linear-Gaussian observation, whose posterior is conjugate: the exact
methods' means are checked against it.
"""

import re

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import condgen
from condgen.priors import GaussianMixturePrior

NOISE = 0.5


def gaussian_prior(dtype=torch.float32) -> GaussianMixturePrior:
    """N(0, I) in 2-D as a one-component mixture: a path prior with the exact denoiser."""
    return GaussianMixturePrior(torch.ones(1), torch.zeros(1, 2), torch.eye(2)[None]).to(dtype)


def linear_model(prior, operator):
    def model():
        x = pyro.sample("x", prior)
        pyro.sample("y", dist.Normal(x @ operator.mT, NOISE).to_event(1))

    return model


def exact_mean(y: torch.Tensor, operator: torch.Tensor) -> torch.Tensor:
    """The posterior mean of x ~ N(0, I), y ~ N(A x, NOISE² I): A^T (A A^T + NOISE² I)^-1 y."""
    gram = operator @ operator.mT + NOISE**2 * torch.eye(len(y), dtype=y.dtype)
    return operator.mT @ torch.linalg.solve(gram, y)


OPERATOR = torch.tensor([[1.0, 0.5]])
Y = torch.tensor([1.2])


def test_data_must_be_a_mapping():
    model = linear_model(gaussian_prior(), OPERATOR)
    for call in (
        lambda: condgen.condition(model, Y, method="importance", progress=False),
        lambda: condgen.Problem(model, Y),
    ):
        with pytest.raises(ValueError, match=r"data must map observed site names.*Tensor"):
            call()
    with pytest.raises(ValueError, match="site names"):
        condgen.condition(model, {0: Y}, method="importance", progress=False)


def test_dtype_mismatch_names_the_sites_and_the_fix():
    model = linear_model(gaussian_prior(torch.float32), OPERATOR.double())
    with pytest.raises(ValueError) as info:
        condgen.condition(model, {"y": Y.double()}, method="importance", progress=False)
    message = str(info.value)
    assert "after sample site 'x'" in message and "dtype" in message
    assert "torch.float32: site 'x'" in message and "torch.float64: observation 'y'" in message
    assert "prior.to(" in message


def test_model_that_raises_names_the_last_site():
    def model():
        pyro.sample("a", dist.Normal(0.0, 1.0))
        raise KeyError("no such column")

    with pytest.raises(ValueError, match=r"after sample site 'a': KeyError: 'no such column'"):
        condgen.Problem(model)


def test_observation_on_another_device_names_the_sites():
    """No CUDA here: the meta device stands in for a second device."""
    model = linear_model(gaussian_prior(), OPERATOR)
    with pytest.raises(ValueError, match=r"different devices \('x' on cpu; 'y' on meta\)"):
        condgen.Problem(model, {"y": Y.to("meta")})


def test_mixture_shape_error_names_all_three_shapes():
    with pytest.raises(ValueError) as info:
        GaussianMixturePrior(torch.ones(2), torch.zeros(3, 2), torch.eye(2).expand(2, 2, 2))
    message = str(info.value)
    assert "weights [2]" in message and "means [3, 2]" in message
    assert "covs [2, 2, 2]" in message


@pytest.mark.parametrize("count", [np.int64(64), np.int32(64), 64.0, np.float64(64.0)], ids=repr)
def test_numpy_and_integral_float_counts_are_accepted(count):
    model = linear_model(gaussian_prior(), OPERATOR)
    post = condgen.condition(
        model, {"y": Y}, method="smc", steps=count // 4, num_samples=count, seed=0,
        progress=False,
    )  # fmt: skip
    assert post.samples["x"].shape == (4, 16, 2)  # four runs of 16 particles
    assert post.stats["nfe"] >= 16


@pytest.mark.parametrize("count", [2.5, 0, -3, True, "100"], ids=repr)
def test_bad_counts_name_the_argument(count):
    model = linear_model(gaussian_prior(), OPERATOR)
    with pytest.raises(ValueError, match="num_samples must be an integer"):
        condgen.condition(model, {"y": Y}, method="smc", num_samples=count, progress=False)
    with pytest.raises(ValueError, match="option 'steps' of method 'smc'"):
        condgen.condition(model, {"y": Y}, method="smc", steps=2.5, progress=False)


def test_list_observation_is_accepted():
    model = linear_model(gaussian_prior(), OPERATOR)
    a = condgen.condition(model, {"y": [1.2]}, method="smc", steps=20, num_samples=64, seed=1,
                          progress=False)  # fmt: skip
    b = condgen.condition(model, {"y": Y}, method="smc", steps=20, num_samples=64, seed=1,
                          progress=False)  # fmt: skip
    assert torch.equal(a.samples["x"], b.samples["x"])
    with pytest.raises(ValueError, match="observation of site 'y' must be a tensor"):
        condgen.Problem(model, {"y": object()})


# One method per family, with small sizes; the exact ones are checked against the conjugate
# posterior mean, the guidance one only for dtype and finiteness (DPS is biased).
FAMILY_RUNS = {
    "importance": ({"num_steps": 300}, True),
    "smc": ({"steps": 30}, True),
    "nuts": ({"num_chains": 1, "warmup_steps": 150}, True),
    "svi": ({"num_steps": 300}, False),
    "dps": ({"steps": 30}, False),
    "pigdm": ({"steps": 30}, False),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("method", list(FAMILY_RUNS))
def test_dtype_end_to_end(method, dtype):
    options, exact = FAMILY_RUNS[method]
    operator, y = OPERATOR.to(dtype), Y.to(dtype)
    model = linear_model(gaussian_prior(dtype), operator)
    num_samples = 400 if method == "nuts" else 2000
    post = condgen.condition(model, {"y": y}, method=method, num_samples=num_samples, seed=0,
                             progress=False, **options)  # fmt: skip
    draws = post.samples["x"]
    assert draws.dtype == dtype and torch.isfinite(draws).all()
    assert post.log_likelihood()["y"].dtype == dtype
    if exact:
        # posterior sd is at most 1; 5 sigma of the mean of n draws (ESS at least n / 4)
        error = (post.moments("x")[0] - exact_mean(y, operator)).abs().max()
        assert error < 5 * (4 / num_samples) ** 0.5


def test_amortized_estimator_follows_a_float64_model():
    operator = OPERATOR.double()
    model = linear_model(gaussian_prior(torch.float64), operator)
    npe = condgen.infer.NPE(model, observed=["y"], hidden_features=[32, 32], transforms=2)
    npe.fit(500, max_epochs=2, seed=0, progress=False)
    post = condgen.condition(model, {"y": Y.double()}, method="npe", estimator=npe,
                             num_samples=50, seed=0, progress=False)  # fmt: skip
    assert post.samples["x"].dtype == torch.float64


# ---------------------------------------------------------------------------- bad seeds


def _tiny_model():
    x = pyro.sample("x", dist.Normal(0.0, 1.0))
    pyro.sample("y", dist.Normal(x, 1.0))


_TINY = {"y": torch.tensor(0.5)}
_DRAWS = torch.randn(50, 2)


def _fit_npe(seed):
    npe = condgen.infer.NPE(_tiny_model, observed=["y"])
    npe.fit(10, max_epochs=1, seed=seed, progress=False)


def _compare(**seeds):
    condgen.compare(_tiny_model, _TINY, methods=["importance"], reference={"x": _DRAWS[:, 0]},
                    num_samples=10, progress=False, **seeds)  # fmt: skip


# Every public entry point that takes a seed, and the name its error must give. The calls fail
# before any inference runs, so the table is fast.
SEED_ENTRY_POINTS = {
    "condition": ("seed", lambda s: condgen.condition(
        _tiny_model, _TINY, method="importance", seed=s, progress=False)),
    "compare": ("seed", lambda s: _compare(seed=s)),
    "compare-count": ("seed", lambda s: _compare(seed=s, seeds=2)),
    "compare-seeds": (r"seeds\[1\]", lambda s: _compare(seeds=[0, s])),
    "calibration": ("seed", lambda s: condgen.evaluate.calibration(
        _tiny_model, "importance", num_simulations=2, num_samples=4, seed=s, progress=False)),
    "Task.reference_samples": ("seed", lambda s: condgen.evaluate.NormalNormal()
                               .reference_samples(4, seed=s)),
    "mixture.reference_samples": ("seed", lambda s: condgen.evaluate
                                  .GaussianMixtureInverseProblem.circle().reference_samples(4, s)),
    "task": ("seed", lambda s: condgen.evaluate.BayesianLinearRegression(seed=s)),
    "get_task": ("seed", lambda s: condgen.evaluate.get_task("gmm", seed=s)),
    "TwoMoons": ("seed", lambda s: condgen.evaluate.TwoMoons(seed=s)),
    "sliced_wasserstein": ("seed", lambda s: condgen.evaluate.sliced_wasserstein(
        _DRAWS, _DRAWS, seed=s)),
    "c2st": ("seed", lambda s: condgen.evaluate.c2st(_DRAWS, _DRAWS, seed=s)),
    "NPE.simulate": ("seed", lambda s: condgen.infer.NPE(_tiny_model, observed=["y"])
                     .simulate(10, seed=s)),
    "NPE.fit": ("seed", _fit_npe),
}  # fmt: skip


@pytest.mark.parametrize("seed", ["abc", 1.5, -1, 2**32, True], ids=repr)
@pytest.mark.parametrize("entry", list(SEED_ENTRY_POINTS))
def test_a_bad_seed_names_its_argument(entry, seed):
    """A seed that is not an integer in [0, 2**32 - 1] (NumPy's range, which
    pyro.set_rng_seed seeds too) is a ValueError naming the argument, never torch's or
    int()'s message ("invalid literal for int()", "manual_seed expected a long")."""
    name, call = SEED_ENTRY_POINTS[entry]
    with pytest.raises(ValueError, match=rf"^{name} must be an integer in \[0, 2\*\*32 - 1\]"):
        call(seed)


def test_numpy_integer_seeds_are_accepted():
    a = condgen.condition(_tiny_model, _TINY, method="importance", proposal="prior",
                          num_samples=20, seed=np.int64(3), progress=False)  # fmt: skip
    b = condgen.condition(_tiny_model, _TINY, method="importance", proposal="prior",
                          num_samples=20, seed=3, progress=False)  # fmt: skip
    assert torch.equal(a.samples["x"], b.samples["x"])


# --------------------------------------------------------------- importance's advice


@pytest.mark.parametrize(
    "options, advice, not_advised",
    [
        ({"proposal": "prior"}, r"proposal='guide'", r"num_steps"),
        ({"proposal": "guide", "num_steps": 1}, r"num_steps, now 1\).*guide='flow'", "proposal="
         "'guide'\\)"),
        ({"proposal": "guide", "guide": "flow", "num_steps": 1}, r"num_steps, now 1\)",
         r"guide='flow'|proposal='guide'\)"),
    ],
    ids=["prior", "guide", "flow-guide"],
)  # fmt: skip
def test_importance_warning_advises_for_the_proposal_in_use(options, advice, not_advised):
    """Importance sampling's Pareto-k warning advises what would change the proposal in use:
    a fitted guide for the prior proposal, a longer fit or heavier tails for a guide (never the
    proposal or guide already in use). The posterior of 100 observations with noise 0.1 has sd
    0.01 against a prior sd of 2, so the prior proposal and a guide fitted for one step give
    k-hat > 0.7 (measured: infinite for all three at seed 5)."""
    task = condgen.evaluate.NormalNormal(num_obs=100, noise=0.1)
    with pytest.warns(UserWarning, match=r"Pareto k-hat .* > 0\.7") as record:
        condgen.condition(task.model, task.data, method="importance", num_samples=200,
                          seed=5, progress=False, **options)  # fmt: skip
    (message,) = [str(w.message) for w in record if "Pareto" in str(w.message)]
    assert re.search(advice, message), message
    assert not re.search(not_advised, message), message
    assert f"proposal='{options['proposal']}';" in message
