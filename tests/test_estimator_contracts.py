"""The contract every posterior estimator keeps, checked for each concrete subclass of
``condgen.amortized.PosteriorEstimator`` (as zuko's tests run over every flow): a seed
reproduces the training and the draws, draws have the sites' shapes and lie in their support,
``log_prob`` is finite and shaped by the batch, ``condition`` draws through the estimator's
method, a saved estimator loads (plain data only) with the same draws and densities, an
embedding network trains with it and is saved, and bad input (an untrained estimator, a NaN or
misshaped observation, an unknown site, bad options, a wrong file) gets an error that names it.
An estimator without a case here fails the suite.

Sizes are the smallest that exercise each code path; accuracy is tested against exact
posteriors in tests/test_npe.py and tests/test_vector_field.py."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import condgen
from condgen.amortized import PathEstimator, PosteriorEstimator
from condgen.infer import FMPE, NPE, NPSE
from condgen.methods.amortized import AmortizedMethod


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

SIMULATIONS, EPOCHS = 200, 2


def model():
    """A positive scale, a vector site (an event dimension) and a plated location: constrained,
    event-shaped and plated latent sites."""
    scale = pyro.sample("scale", dist.LogNormal(0.0, 0.5))
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    with pyro.plate("p", 2):
        loc = pyro.sample("loc", dist.Normal(mu.sum(-1), 1.0))
        pyro.sample("y", dist.Normal(loc, scale))


def longer_model():
    """The same sites as ``model`` with a plate of three: other latent and observed shapes."""
    scale = pyro.sample("scale", dist.LogNormal(0.0, 0.5))
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    with pyro.plate("p", 3):
        loc = pyro.sample("loc", dist.Normal(mu.sum(-1), 1.0))
        pyro.sample("y", dist.Normal(loc, scale))


def _fitted(cls, seed=0, **options):
    assert cls in OPTIONS, f"estimator {cls.__name__} has no contract case"
    torch.manual_seed(seed)
    estimator = cls(model, observed=["y"], **OPTIONS[cls], **options)
    estimator.fit(SIMULATIONS, max_epochs=EPOCHS, seed=seed, progress=False)
    return estimator


@pytest.fixture(scope="module", params=ESTIMATORS, ids=lambda cls: cls.__name__)
def fitted(request):
    return request.param, _fitted(request.param)


Y = {"y": torch.tensor([0.3, -0.2])}
SHAPES = {"scale": (), "mu": (2,), "loc": (2,)}


def test_every_estimator_has_a_case():
    assert set(ESTIMATORS) == set(OPTIONS)


def test_draws_shapes_support_and_log_prob(fitted):
    _, estimator = fitted
    assert estimator.latent_features == 1 + 2 + 2 and estimator.observation_features == 2
    torch.manual_seed(0)
    draws = estimator.sample(Y, 7)
    assert {n: tuple(v.shape) for n, v in draws.items()} == {n: (7, *s) for n, s in SHAPES.items()}
    assert bool((draws["scale"] > 0).all())
    log_q = estimator.log_prob(draws, Y)
    assert log_q.shape == (7,) and bool(torch.isfinite(log_q).all())
    assert estimator.log_prob({n: v[0] for n, v in draws.items()}, Y).shape == ()
    batch = {"y": torch.randn(7, 2)}  # one observation per draw
    assert estimator.log_prob(draws, batch).shape == (7,)


def test_training_history(fitted):
    """One finite training and one validation loss per epoch (too few epochs for early
    stopping); the simulation count is kept. That the losses fall is tested with the longer
    trainings of tests/test_npe.py and tests/test_vector_field.py."""
    _, estimator = fitted
    assert len(estimator.training_losses) == len(estimator.validation_losses) == EPOCHS
    losses = estimator.training_losses + estimator.validation_losses
    assert all(math.isfinite(v) for v in losses)
    assert estimator.trained and int(estimator.num_simulations) == SIMULATIONS


@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda cls: cls.__name__)
def test_automatic_minibatch_follows_the_training_set(cls, monkeypatch):
    """``batch_size="auto"`` (the default) trains on a twentieth of the training simulations
    (at least 16, at most ``largest_batch``), so that an epoch is 20 steps at any budget; an
    explicit size is kept. The sizes are the largest the loss receives (an epoch's last
    minibatch holds the rest), validation chunks left out."""
    torch.manual_seed(0)
    estimator = cls(model, observed=["y"], **OPTIONS[cls])
    seen = []
    objective = estimator._objective
    monkeypatch.setattr(
        estimator,
        "_objective",
        lambda theta, *a, **k: seen.append(len(theta)) or objective(theta, *a, **k),
    )
    cases = [({}, 800, 36), ({}, 200, 16), ({"batch_size": 50}, 800, 50)]
    for options, simulations, expected in cases:
        seen.clear()
        estimator.fit(simulations, max_epochs=1, seed=0, progress=False, **options)
        validation = round(0.1 * simulations)
        assert max(set(seen) - {validation}) == expected, (options, simulations, seen)
    monkeypatch.setattr(estimator, "largest_batch", 24)
    seen.clear()
    estimator.fit(800, max_epochs=1, seed=0, progress=False)
    assert max(set(seen) - {80}) == 24


def test_a_seed_reproduces_training_and_draws(fitted):
    cls, estimator = fitted
    again = _fitted(cls)
    other = _fitted(cls, seed=1)
    assert estimator.training_losses == again.training_losses
    assert estimator.validation_losses == again.validation_losses
    assert estimator.training_losses != other.training_losses
    for e in (estimator, again):
        torch.manual_seed(5)
        e.draws = e.sample(Y, 5)
    assert all(torch.equal(estimator.draws[n], again.draws[n]) for n in estimator.draws)


def test_condition_draws_through_the_method(fitted):
    """``condition`` by the method's name and with an instance of its class give the same
    draws under a seed, shaped ``[1, num_samples, *site.shape]``, with the estimator's NFE and
    simulation count in the stats."""
    cls, estimator = fitted
    name = cls.label.lower()
    method = next(m for m in AmortizedMethod.__subclasses__() if m.estimator_class is cls)
    assert method.name == name and condgen.methods.available()[name] == "amortized"
    a = condgen.condition(model, Y, method=name, estimator=estimator, num_samples=5, seed=3,
                          progress=False)  # fmt: skip
    b = condgen.condition(model, Y, method=method(estimator=estimator), num_samples=5, seed=3,
                          progress=False)  # fmt: skip
    assert {n: tuple(v.shape) for n, v in a.samples.items()} == {
        n: (1, 5, *s) for n, s in SHAPES.items()
    }
    assert all(torch.equal(a.samples[n], b.samples[n]) for n in SHAPES)
    assert a.method == name and a.stats["nfe"] == estimator.nfe and a.stats["time_s"] >= 0
    assert a.stats["num_simulations"] == SIMULATIONS
    a.to_arviz()


def test_save_and_load_keep_the_draws_and_densities(fitted, tmp_path):
    """The file holds plain data and tensors only; the loaded estimator gives the same draws
    under a seed, the same densities, histories, simulation count and sampler cost."""
    cls, estimator = fitted
    path = tmp_path / "estimator.pt"
    estimator.save(path)
    document = torch.load(path, weights_only=True)
    assert document["format"] == f"condgen-{cls.label.lower()}"
    assert document["config"]["observed"] == ["y"]
    loaded = cls.load(path, model)
    draws = []
    for e in (estimator, loaded):
        torch.manual_seed(5)
        draws.append(e.sample(Y, 6))
    assert all(torch.equal(draws[0][n], draws[1][n]) for n in SHAPES)
    torch.testing.assert_close(loaded.log_prob(draws[0], Y), estimator.log_prob(draws[0], Y))
    assert loaded.training_losses == estimator.training_losses
    assert loaded.validation_losses == estimator.validation_losses
    assert int(loaded.num_simulations) == SIMULATIONS and loaded.nfe == estimator.nfe


def test_load_refuses_other_files_and_models(fitted, tmp_path):
    cls, estimator = fitted
    path = tmp_path / "estimator.pt"
    estimator.save(path)
    with pytest.raises(ValueError, match="latent sites"):
        cls.load(path, longer_model)
    for other in ESTIMATORS:
        if other is not cls:
            with pytest.raises(ValueError, match=f"not a condgen {other.label} file"):
                other.load(path, model)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(ValueError, match=f"not a condgen {cls.label} file"):
        cls.load(plain, model)
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": f"condgen-{cls.label.lower()}", "code": nn.Linear(2, 2)}, pickled)
    with pytest.raises(ValueError, match=r"refuses to load|not a condgen"):
        cls.load(pickled, model)
    with pytest.raises(ValueError, match="without an embedding"):
        cls.load(path, model, embedding=nn.Linear(2, 2))


@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda cls: cls.__name__)
def test_embedding_trained_jointly_and_saved(cls, tmp_path):
    """An embedding network's weights change in training; they are saved, loading needs an
    instance of the network, and the loaded estimator draws the same."""

    def network():
        return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3))

    torch.manual_seed(0)
    embedding = network()
    before = [p.detach().clone() for p in embedding.parameters()]
    estimator = _fitted(cls, embedding=embedding)
    assert any(not torch.equal(a, b) for a, b in zip(before, embedding.parameters(), strict=True))
    path = tmp_path / "estimator.pt"
    estimator.save(path)
    with pytest.raises(ValueError, match="embedding network"):
        cls.load(path, model)
    loaded = cls.load(path, model, embedding=network())
    draws = []
    for e in (estimator, loaded):
        torch.manual_seed(1)
        draws.append(e.sample(Y, 10))
    assert all(torch.equal(draws[0][n], draws[1][n]) for n in SHAPES)


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
        cls(model, observed=["y", "scale", "mu", "loc"])
    with pytest.raises(ValueError, match="batch_size"):
        untrained.fit(50, batch_size=0, progress=False)
    with pytest.raises(ValueError, match=r"batch_size.*'auto'"):
        untrained.fit(50, batch_size="large", progress=False)
    with pytest.raises(ValueError, match="ema"):
        untrained.fit(50, ema=1.0, progress=False)
