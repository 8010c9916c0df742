"""The contract every posterior estimator keeps, checked for each concrete subclass of
``condgen.amortized.PosteriorEstimator`` (as zuko's tests run over every flow): a seed
reproduces the training and the draws, draws have the sites' shapes and lie in their support,
``log_prob`` is finite and shaped by the batch, a saved estimator loads with the same
densities, and bad input (an untrained estimator, a NaN or misshaped observation, an unknown
site, bad options) gets an error that names it. An estimator without a case here fails the
suite.

Sizes are the smallest that exercise each code path; accuracy is tested against exact
posteriors in tests/test_npe.py and tests/test_vector_field.py."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from condgen.amortized import PathEstimator, PosteriorEstimator
from condgen.infer import FMPE, NPE, NPSE


def _concrete(cls):
    for sub in cls.__subclasses__():
        if sub is not PathEstimator and not getattr(sub, "__abstractmethods__", None):
            yield sub
        yield from _concrete(sub)


ESTIMATORS = sorted(set(_concrete(PosteriorEstimator)), key=lambda cls: cls.__name__)

#: Small networks of each estimator.
OPTIONS = {
    NPE: {"transforms": 1, "hidden_features": [16]},
    FMPE: {"hidden": (16,), "steps": 4},
    NPSE: {"hidden": (16,), "steps": 4},
}


def model():
    """A positive scale and a plated location: two constrained and plated latent sites."""
    scale = pyro.sample("scale", dist.LogNormal(0.0, 0.5))
    with pyro.plate("p", 2):
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(loc, scale))


def _fitted(cls, seed=0):
    assert cls in OPTIONS, f"estimator {cls.__name__} has no contract case"
    torch.manual_seed(seed)
    estimator = cls(model, observed=["y"], **OPTIONS[cls])
    estimator.fit(200, max_epochs=2, seed=seed, progress=False)
    return estimator


@pytest.fixture(scope="module", params=ESTIMATORS, ids=lambda cls: cls.__name__)
def fitted(request):
    return request.param, _fitted(request.param)


Y = {"y": torch.tensor([0.3, -0.2])}


def test_every_estimator_has_a_case():
    assert set(ESTIMATORS) == set(OPTIONS)


def test_draws_shapes_support_and_log_prob(fitted):
    _, estimator = fitted
    torch.manual_seed(0)
    draws = estimator.sample(Y, 7)
    assert draws["scale"].shape == (7,) and draws["loc"].shape == (7, 2)
    assert bool((draws["scale"] > 0).all())
    log_q = estimator.log_prob(draws, Y)
    assert log_q.shape == (7,) and bool(torch.isfinite(log_q).all())
    batch = {"y": torch.randn(7, 2)}  # one observation per draw
    assert estimator.log_prob(draws, batch).shape == (7,)


def test_a_seed_reproduces_training_and_draws(fitted):
    cls, estimator = fitted
    again = _fitted(cls)
    other = _fitted(cls, seed=1)
    assert estimator.training_losses == again.training_losses
    assert estimator.training_losses != other.training_losses
    for e in (estimator, again):
        torch.manual_seed(5)
        e.draws = e.sample(Y, 5)
    assert all(torch.equal(estimator.draws[n], again.draws[n]) for n in estimator.draws)


def test_save_and_load_keep_the_densities(fitted, tmp_path):
    cls, estimator = fitted
    path = tmp_path / "estimator.pt"
    estimator.save(path)
    loaded = cls.load(path, model)
    torch.manual_seed(0)
    draws = estimator.sample(Y, 6)
    torch.testing.assert_close(loaded.log_prob(draws, Y), estimator.log_prob(draws, Y))
    assert loaded.training_losses == estimator.training_losses


def test_bad_input_names_the_problem(fitted):
    cls, estimator = fitted
    untrained = cls(model, observed=["y"], **OPTIONS[cls])
    with pytest.raises(ValueError, match="untrained"):
        untrained.sample(Y, 3)
    with pytest.raises(ValueError, match=r"'y'.*NaN"):
        estimator.sample({"y": torch.tensor([float("nan"), 0.0])}, 3)
    with pytest.raises(ValueError, match=r"'y'.*shape"):
        estimator.sample({"y": torch.zeros(3)}, 3)
    with pytest.raises(ValueError, match="'z'"):
        estimator.sample({**Y, "z": torch.zeros(1)}, 3)
    with pytest.raises(ValueError, match="num_samples"):
        estimator.sample(Y, 0)
    with pytest.raises(ValueError, match="not sample sites"):
        cls(model, observed=["w"])
    with pytest.raises(ValueError, match="leaves no latent site"):
        cls(model, observed=["y", "scale", "loc"])
    with pytest.raises(ValueError, match="batch_size"):
        untrained.fit(50, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="ema"):
        untrained.fit(50, ema=1.0, progress=False)
