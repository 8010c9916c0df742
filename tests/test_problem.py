r"""Tests of condgen.Problem: sites, vectorised densities, draws and input validation.

Densities are checked against hand computations with torch.distributions (one particle at a
time), and draws against closed-form moments with tolerances of a few Monte Carlo standard
errors.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal, init_to_value
from torch.distributions import constraints
from torch.testing import assert_close

import condgen
from condgen import Problem

NUM_SE = 4.5  # tolerance of moment checks, in Monte Carlo standard errors


@pytest.fixture(autouse=True)
def _seed():
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


# --------------------------------------------------------------------------------- models

PLATE_Y = torch.tensor([0.3, -1.2, 2.1, 0.8, 1.5])


def plate_model():
    mu = pyro.sample("mu", dist.Normal(0.5, 1.5))
    s = pyro.sample("s", dist.LogNormal(0.0, 0.5))
    pyro.deterministic("shift", mu + 1.0)
    with pyro.plate("data", 5):
        pyro.sample("y", dist.Normal(mu, s))


def plate_log_likelihood(values, data):
    return torch.stack(
        [
            dist.Normal(mu, s).log_prob(data["y"]).sum()
            for mu, s in zip(values["mu"], values["s"], strict=True)
        ]
    )


def plate_log_prior(values):
    return dist.Normal(0.5, 1.5).log_prob(values["mu"]) + dist.LogNormal(0.0, 0.5).log_prob(
        values["s"]
    )


VECTOR_LOC = torch.tensor([1.0, -0.5, 0.2])
VECTOR_SCALE = torch.tensor([1.0, 2.0, 0.5])
VECTOR_Y = torch.tensor([[0.9, -1.0, 0.1], [1.4, 0.3, 0.4], [0.2, -2.0, 0.0], [1.1, 0.5, 0.3]])


def vector_model():
    x = pyro.sample("x", dist.Normal(VECTOR_LOC, VECTOR_SCALE).to_event(1))
    with pyro.plate("data", 4):
        pyro.sample("y", dist.Normal(x, 0.7).to_event(1))


def vector_log_likelihood(values, data):
    return torch.stack([dist.Normal(x, 0.7).log_prob(data["y"]).sum() for x in values["x"]])


def vector_log_prior(values):
    return torch.stack(
        [dist.Normal(VECTOR_LOC, VECTOR_SCALE).log_prob(x).sum() for x in values["x"]]
    )


NESTED_Y = torch.linspace(-1.5, 2.0, 12).reshape(3, 4)


def nested_model():
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    with pyro.plate("groups", 3, dim=-2):
        b = pyro.sample("b", dist.Normal(a, 1.0))
        with pyro.plate("items", 4, dim=-1):
            c = pyro.sample("c", dist.Normal(0.0, 0.5))
            pyro.sample("y", dist.Normal(b + c, 0.5))


def nested_log_likelihood(values, data):
    return torch.stack(
        [
            dist.Normal(b + c, 0.5).log_prob(data["y"]).sum()
            for b, c in zip(values["b"], values["c"], strict=True)
        ]
    )


def nested_log_prior(values):
    return torch.stack(
        [
            dist.Normal(0.0, 1.0).log_prob(a)
            + dist.Normal(a, 1.0).log_prob(b).sum()
            + dist.Normal(0.0, 0.5).log_prob(c).sum()
            for a, b, c in zip(values["a"], values["b"], values["c"], strict=True)
        ]
    )


OBS_Y = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])


def obs_model(y=None):
    p = pyro.sample("p", dist.Beta(2.0, 3.0))
    with pyro.plate("data", 6):
        pyro.sample("y", dist.Bernoulli(p), obs=y)


def obs_log_likelihood(values, data):
    return torch.stack([dist.Bernoulli(p).log_prob(OBS_Y).sum() for p in values["p"]])


def obs_log_prior(values):
    return dist.Beta(2.0, 3.0).log_prob(values["p"])


def scalar_model():
    x = pyro.sample("x", dist.Normal(0.0, 1.0))
    pyro.sample("y", dist.Normal(x, 0.5))


def scalar_log_likelihood(values, data):
    return dist.Normal(values["x"], 0.5).log_prob(data["y"])


def scalar_log_prior(values):
    return dist.Normal(0.0, 1.0).log_prob(values["x"])


def mvn_model():
    x = pyro.sample("x", dist.Normal(VECTOR_LOC, VECTOR_SCALE).to_event(1))
    pyro.sample("y", dist.MultivariateNormal(x, 0.5 * torch.eye(3)))


def mvn_log_likelihood(values, data):
    return torch.stack(
        [dist.MultivariateNormal(x, 0.5 * torch.eye(3)).log_prob(data["y"]) for x in values["x"]]
    )


# (model, data, kwargs, log-likelihood by hand, log-prior by hand, batch shape of y)
CASES = {
    "plate": (plate_model, {"y": PLATE_Y}, {}, plate_log_likelihood, plate_log_prior, (5,)),
    "to_event": (
        vector_model,
        {"y": VECTOR_Y},
        {},
        vector_log_likelihood,
        vector_log_prior,
        (4,),
    ),
    "nested": (
        nested_model,
        {"y": NESTED_Y},
        {},
        nested_log_likelihood,
        nested_log_prior,
        (3, 4),
    ),
    "obs_in_model": (obs_model, {}, {"y": OBS_Y}, obs_log_likelihood, obs_log_prior, (6,)),
    "no_plate": (
        scalar_model,
        {"y": torch.tensor(0.7)},
        {},
        scalar_log_likelihood,
        scalar_log_prior,
        (),
    ),
    "no_plate_to_event": (
        mvn_model,
        {"y": torch.tensor([0.5, -1.0, 0.0])},
        {},
        mvn_log_likelihood,
        vector_log_prior,
        (),
    ),
}


def make_problem(name: str) -> Problem:
    model, data, kwargs, *_ = CASES[name]
    return Problem(model, data, kwargs=kwargs)


def observed(name: str) -> dict[str, torch.Tensor]:
    _, data, kwargs, *_ = CASES[name]
    return {**data, **kwargs}


# ---------------------------------------------------------------------------------- sites


def test_sites_plate_model():
    problem = make_problem("plate")
    assert list(problem.latent_sites) == ["mu", "s"]
    assert list(problem.observed_sites) == ["y"]
    assert problem.deterministic_sites == ["shift"]
    mu, s, y = problem.latent_sites["mu"], problem.latent_sites["s"], problem.observed_sites["y"]
    assert mu.shape == torch.Size([]) and mu.event_dim == 0
    assert s.shape == torch.Size([]) and s.event_dim == 0
    assert y.shape == torch.Size([5]) and y.event_dim == 0
    assert mu.support is constraints.real
    assert s.support is constraints.positive  # LogNormal
    assert bool(s.support.check(torch.tensor(0.5))) and not bool(
        s.support.check(torch.tensor(-1.0))
    )
    assert not (mu.discrete or s.discrete or mu.neural or s.neural)
    assert_close(problem.observations["y"], PLATE_Y)
    assert problem.max_plate_nesting == 1
    assert problem.dtype == torch.float32


def test_deterministic_sites_are_neither_latent_nor_observed():
    problem = make_problem("plate")
    assert "shift" not in problem.latent_sites and "shift" not in problem.observed_sites
    values = problem.sample_prior(3)
    assert set(values) == {"mu", "s"}


def test_sites_to_event_model():
    problem = make_problem("to_event")
    x, y = problem.latent_sites["x"], problem.observed_sites["y"]
    assert x.shape == torch.Size([3]) and x.event_dim == 1 and x.batch_ndim == 0
    assert y.shape == torch.Size([4, 3]) and y.event_dim == 1 and y.batch_ndim == 1
    assert isinstance(x.support, constraints.independent)
    assert x.support.base_constraint is constraints.real and x.support.event_dim == 1


def test_sites_nested_plates():
    problem = make_problem("nested")
    assert list(problem.latent_sites) == ["a", "b", "c"]
    assert problem.latent_sites["a"].shape == torch.Size([])
    assert problem.latent_sites["b"].shape == torch.Size([3, 1])
    assert problem.latent_sites["c"].shape == torch.Size([3, 4])
    assert problem.observed_sites["y"].shape == torch.Size([3, 4])
    assert all(s.event_dim == 0 for s in problem.latent_sites.values())
    assert problem.max_plate_nesting == 2


def test_sites_observation_through_obs():
    problem = make_problem("obs_in_model")
    assert list(problem.latent_sites) == ["p"]
    assert list(problem.observed_sites) == ["y"]
    assert problem.latent_sites["p"].support is constraints.unit_interval
    assert problem.observed_sites["y"].support is constraints.boolean
    assert problem.observed_sites["y"].discrete
    assert_close(problem.observations["y"], OBS_Y)
    assert repr(problem) == "Problem(latent=[p[]], observed=[y[6]])"


def test_discrete_latent_site_is_flagged():
    def model():
        with pyro.plate("data", 3):
            k = pyro.sample("k", dist.Poisson(torch.ones(2)).to_event(1))
            pyro.sample("y", dist.Normal(k.sum(-1), 1.0))

    problem = Problem(model, {"y": torch.zeros(3)})
    assert problem.latent_sites["k"].shape == torch.Size([3, 2])
    assert problem.latent_sites["k"].discrete


# ------------------------------------------------------------------------------ densities


@pytest.mark.parametrize("name", list(CASES))
def test_log_likelihood_matches_hand_computation(name):
    problem = make_problem(name)
    hand_log_likelihood = CASES[name][3]
    values = problem.sample_prior(7)
    log_likelihood = problem.log_likelihood(values)
    assert log_likelihood.shape == (7,)
    assert_close(log_likelihood, hand_log_likelihood(values, observed(name)))


@pytest.mark.parametrize("name", list(CASES))
def test_log_joint_matches_hand_computation(name):
    problem = make_problem(name)
    _, _, _, hand_log_likelihood, hand_log_prior, _ = CASES[name]
    values = problem.sample_prior(7)
    expected = hand_log_likelihood(values, observed(name)) + hand_log_prior(values)
    assert_close(problem.log_joint(values), expected)


@pytest.mark.parametrize("name", list(CASES))
def test_log_likelihood_is_per_particle(name):
    # Evaluating particles together or one at a time gives the same values.
    problem = make_problem(name)
    values = problem.sample_prior(5)
    together = problem.log_likelihood(values)
    alone = torch.cat(
        [problem.log_likelihood({k: v[i : i + 1] for k, v in values.items()}) for i in range(5)]
    )
    assert_close(together, alone)


def test_log_likelihood_at_given_values():
    problem = make_problem("plate")
    values = {"mu": torch.tensor([0.0, 1.0, -2.0]), "s": torch.tensor([1.0, 0.5, 3.0])}
    assert_close(problem.log_likelihood(values), plate_log_likelihood(values, {"y": PLATE_Y}))
    expected = plate_log_likelihood(values, {"y": PLATE_Y}) + plate_log_prior(values)
    assert_close(problem.log_joint(values), expected)


@pytest.mark.parametrize("name", list(CASES))
def test_pointwise_log_likelihood(name):
    problem = make_problem(name)
    batch_shape = CASES[name][5]
    values = problem.sample_prior(6)
    pointwise = problem.pointwise_log_likelihood(values)
    assert set(pointwise) == {"y"}
    assert pointwise["y"].shape == (6, *batch_shape)
    total = pointwise["y"].reshape(6, -1).sum(-1)
    assert_close(total, CASES[name][3](values, observed(name)))
    assert_close(total, problem.log_likelihood(values))


def test_pointwise_log_likelihood_values_plate():
    problem = make_problem("plate")
    values = {"mu": torch.tensor([0.0, 1.0]), "s": torch.tensor([1.0, 0.5])}
    pointwise = problem.pointwise_log_likelihood(values)["y"]
    expected = torch.stack(
        [dist.Normal(0.0, 1.0).log_prob(PLATE_Y), dist.Normal(1.0, 0.5).log_prob(PLATE_Y)]
    )
    assert_close(pointwise, expected)


# ------------------------------------------------------------------------------- sampling


def test_sample_prior_shapes_and_moments():
    num = 20_000
    problem = make_problem("plate")
    values = problem.sample_prior(num)
    assert values["mu"].shape == (num,) and values["s"].shape == (num,)
    assert abs(values["mu"].mean() - 0.5) < NUM_SE * 1.5 / math.sqrt(num)
    s_mean = math.exp(0.5**2 / 2)
    s_sd = math.sqrt((math.exp(0.5**2) - 1) * math.exp(0.5**2))
    assert abs(values["s"].mean() - s_mean) < NUM_SE * s_sd / math.sqrt(num)
    assert (values["s"] > 0).all()

    problem = make_problem("nested")
    values = problem.sample_prior(num)
    assert values["a"].shape == (num,)
    assert values["b"].shape == (num, 3, 1)
    assert values["c"].shape == (num, 3, 4)
    # b = a + noise: mean 0, variance 2; its groups are independent given a but share a.
    b = values["b"].squeeze(-1)
    assert (b.mean(0).abs() < NUM_SE * math.sqrt(2 / num)).all()
    var_se = 2 * math.sqrt(2 / num)
    assert ((b.var(0) - 2).abs() < NUM_SE * var_se).all()
    assert ((b - values["a"].unsqueeze(-1)).mean(0).abs() < NUM_SE / math.sqrt(num)).all()

    problem = make_problem("to_event")
    x = problem.sample_prior(num)["x"]
    assert x.shape == (num, 3)
    assert ((x.mean(0) - VECTOR_LOC).abs() < NUM_SE * VECTOR_SCALE / math.sqrt(num)).all()
    assert ((x.std(0) / VECTOR_SCALE - 1).abs() < NUM_SE * math.sqrt(1 / (2 * num))).all()


def test_sample_predictive_given_fixed_latents():
    num = 20_000
    problem = make_problem("plate")
    half = num // 2
    mu = torch.cat([torch.full((half,), -2.0), torch.full((half,), 3.0)])
    s = torch.cat([torch.full((half,), 0.5), torch.full((half,), 2.0)])
    y = problem.sample_predictive({"mu": mu, "s": s})["y"]
    assert y.shape == (num, 5)
    for rows, loc, scale in [(slice(0, half), -2.0, 0.5), (slice(half, None), 3.0, 2.0)]:
        part = y[rows]
        assert ((part.mean(0) - loc).abs() < NUM_SE * scale / math.sqrt(half)).all()
        assert ((part.std(0) / scale - 1).abs() < NUM_SE * math.sqrt(1 / (2 * half))).all()
    # The observations themselves are left untouched.
    assert_close(problem.observations["y"], PLATE_Y)


def test_sample_predictive_observation_through_obs():
    num = 20_000
    problem = make_problem("obs_in_model")
    p = torch.full((num,), 0.3)
    y = problem.sample_predictive({"p": p})["y"]
    assert y.shape == (num, 6)
    assert set(y.unique().tolist()) <= {0.0, 1.0}
    assert ((y.mean(0) - 0.3).abs() < NUM_SE * math.sqrt(0.3 * 0.7 / num)).all()


def test_sample_predictive_shapes_nested():
    problem = make_problem("nested")
    values = problem.sample_prior(11)
    y = problem.sample_predictive(values)["y"]
    assert y.shape == (11, 3, 4)
    # Given b = 1 and c = 0 in every group and item, y ~ N(1, 0.5^2).
    num = 20_000
    values = {
        "a": torch.zeros(num),
        "b": torch.ones(num, 3, 1),
        "c": torch.zeros(num, 3, 4),
    }
    y = problem.sample_predictive(values)["y"]
    assert ((y.mean(0) - 1.0).abs() < NUM_SE * 0.5 / math.sqrt(num)).all()


def guide_model():
    s = pyro.sample("s", dist.LogNormal(0.0, 0.5))
    m = pyro.sample("m", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    with pyro.plate("data", 5):
        pyro.sample("y", dist.Normal(m.sum(-1, keepdim=True), s.unsqueeze(-1)).to_event(1))


def test_sample_guide_log_density_matches_hand_computation():
    problem = Problem(guide_model, {"y": torch.randn(5, 1)})
    init = {"s": torch.tensor(2.0), "m": torch.tensor([0.5, -1.0])}
    guide = AutoNormal(
        problem.conditioned_model, init_loc_fn=init_to_value(values=init), init_scale=0.3
    )
    guide()  # builds the parameters
    # AutoNormal's parameters, in the unconstrained space of each site
    loc_s, scale_s = guide.locs.s.detach(), guide.scales.s.detach()
    loc_m, scale_m = guide.locs.m.detach(), guide.scales.m.detach()
    assert_close(loc_s, torch.tensor(2.0).log())
    assert_close(scale_m, torch.full((2,), 0.3))

    values, log_q = problem.sample_guide(guide, 9)
    assert values["s"].shape == (9,) and values["m"].shape == (9, 2) and log_q.shape == (9,)
    # q(s) is log-normal: the normal density of log s times the Jacobian 1 / s.
    expected = (
        dist.Normal(loc_s, scale_s).log_prob(values["s"].log())
        - values["s"].log()
        + dist.Normal(loc_m, scale_m).log_prob(values["m"]).sum(-1)
    )
    assert_close(log_q, expected)


def test_sample_guide_draws_follow_the_guide():
    problem = Problem(guide_model, {"y": torch.randn(5, 1)})
    init = {"s": torch.tensor(2.0), "m": torch.tensor([0.5, -1.0])}
    guide = AutoNormal(
        problem.conditioned_model, init_loc_fn=init_to_value(values=init), init_scale=0.3
    )
    guide()
    num = 20_000
    values, _ = problem.sample_guide(guide, num)
    se = 0.3 / math.sqrt(num)
    assert abs(values["s"].log().mean() - math.log(2.0)) < NUM_SE * se
    assert ((values["m"].mean(0) - torch.tensor([0.5, -1.0])).abs() < NUM_SE * se).all()
    assert (values["m"][:, 0] != values["m"][:, 1]).all()  # independent particles


# ------------------------------------------------------------------------- bad input


def test_unknown_data_key_lists_the_sites():
    with pytest.raises(ValueError, match="'z'") as info:
        Problem(plate_model, {"z": torch.zeros(5)})
    for site in ("mu", "s", "y"):
        assert f"'{site}'" in str(info.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=str)
def test_non_finite_observation(bad):
    y = PLATE_Y.clone()
    y[2] = bad
    with pytest.raises(ValueError, match=r"'y'.*(NaN|infinite)"):
        Problem(plate_model, {"y": y})


def test_non_finite_observation_through_obs():
    y = OBS_Y.clone()
    y[0] = float("nan")
    with pytest.raises(ValueError, match=r"'y'.*(NaN|infinite)"):
        Problem(obs_model, kwargs={"y": y})


@pytest.mark.parametrize("shape", [(4,), (5, 1), (2, 5)], ids=str)
def test_observation_shape_does_not_fit(shape):
    with pytest.raises(ValueError, match=r"'y'.*shape"):
        Problem(plate_model, {"y": torch.zeros(shape)})


def test_observation_event_shape_does_not_fit():
    with pytest.raises(ValueError, match=r"'y'.*shape"):
        Problem(vector_model, {"y": torch.zeros(4, 2)})


def test_observation_outside_support_poisson():
    def model():
        rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
        with pyro.plate("data", 3):
            pyro.sample("counts", dist.Poisson(rate))

    with pytest.raises(ValueError, match=r"'counts'.*support"):
        Problem(model, {"counts": torch.tensor([1.0, -1.0, 2.0])})
    with pytest.raises(ValueError, match=r"'counts'.*support"):
        Problem(model, {"counts": torch.tensor([1.0, 0.5, 2.0])})
    Problem(model, {"counts": torch.tensor([1.0, 0.0, 2.0])})  # fine


def test_observation_outside_support_bernoulli():
    bad = torch.tensor([1.0, 2.0, 0.0, 1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match=r"'y'.*support"):
        Problem(obs_model, kwargs={"y": bad})

    def model():
        p = pyro.sample("p", dist.Beta(2.0, 3.0))
        with pyro.plate("data", 6):
            pyro.sample("y", dist.Bernoulli(p))

    with pytest.raises(ValueError, match=r"'y'.*support"):
        Problem(model, {"y": bad})


def test_unvectorisable_vector_site_without_to_event():
    def model():
        x = pyro.sample("x", dist.Normal(torch.zeros(3), 1.0))  # no .to_event(1), no plate
        with pyro.plate("data", 5):
            pyro.sample("y", dist.Normal(x.sum(-1), 1.0))

    with pytest.raises(ValueError, match="vectoris") as info:
        Problem(model, {"y": torch.zeros(5)})
    assert "pyro.plate" in str(info.value) and "to_event" in str(info.value)


def test_unvectorisable_reduction_over_particles():
    def model():
        x = pyro.sample("x", dist.Normal(torch.zeros(3), 1.0))  # no .to_event(1), no plate
        with pyro.plate("data", 5):
            pyro.sample("y", dist.Normal(x.sum(), 1.0))

    y = torch.linspace(-1.0, 1.0, 5)
    try:
        problem = Problem(model, {"y": y})
    except ValueError as error:
        assert "pyro.plate" in str(error) and "to_event" in str(error)
        return
    x = torch.randn(4, 3)
    expected = torch.stack([dist.Normal(xi.sum(), 1.0).log_prob(y).sum() for xi in x])
    assert_close(problem.log_likelihood({"x": x}), expected)


def test_unvectorisable_control_flow():
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        if x > 0:
            pyro.sample("y", dist.Normal(x, 1.0))
        else:
            pyro.sample("y", dist.Normal(-x, 2.0))

    with pytest.raises(ValueError, match="vectoris") as info:
        Problem(model, {"y": torch.tensor(0.3)})
    assert "pyro.plate" in str(info.value) and "to_event" in str(info.value)


def test_values_with_wrong_shape():
    problem = make_problem("plate")
    with pytest.raises(ValueError, match="'mu'"):
        problem.log_likelihood({"mu": torch.zeros(4, 2), "s": torch.ones(4)})
    problem = make_problem("to_event")
    with pytest.raises(ValueError, match="'x'"):
        problem.log_likelihood({"x": torch.zeros(4, 2)})
    with pytest.raises(ValueError, match="'x'"):
        problem.log_joint({"x": torch.zeros(4)})
    with pytest.raises(ValueError, match="'x'"):
        problem.pointwise_log_likelihood({"x": torch.zeros(4, 3, 1)})
    with pytest.raises(ValueError, match="'x'"):
        problem.sample_predictive({"x": torch.zeros(3)})


def test_values_with_different_particle_counts():
    problem = make_problem("plate")
    with pytest.raises(ValueError, match="particle"):
        problem.log_likelihood({"mu": torch.zeros(4), "s": torch.ones(3)})


def test_missing_latent_values():
    problem = make_problem("plate")
    with pytest.raises(ValueError, match="'s'"):
        problem.log_likelihood({"mu": torch.zeros(4)})
    with pytest.raises(ValueError, match="'s'"):
        problem.log_joint({"mu": torch.zeros(4)})
    with pytest.raises(ValueError, match="'s'"):
        problem.sample_predictive({"mu": torch.zeros(4)})


@pytest.mark.parametrize("key", ["typo", "shift"])
def test_values_with_unknown_key(key):
    problem = make_problem("plate")
    values = {"mu": torch.zeros(4), "s": torch.ones(4)}
    try:
        result = problem.log_likelihood({**values, key: torch.ones(4)})
    except ValueError as error:
        assert key in str(error)
    else:
        assert_close(result, problem.log_likelihood(values))


# --------------------------------------------------------------------- discrete latents


def discrete_model():
    z = pyro.sample("z", dist.Bernoulli(0.5))
    with pyro.plate("data", 2):
        pyro.sample("y", dist.Normal(z, 1.0))


def test_require_continuous_names_the_discrete_site():
    problem = Problem(discrete_model, {"y": torch.tensor([0.2, 0.9])})
    assert problem.latent_sites["z"].discrete
    with pytest.raises(ValueError, match="'z'"):
        problem.require_continuous("nuts")
    make_problem("plate").require_continuous("nuts")  # continuous: no error


def test_nuts_on_a_discrete_latent_names_the_site():
    with pytest.raises(ValueError, match="'z'"):
        condgen.condition(
            discrete_model,
            {"y": torch.tensor([0.2, 0.9])},
            method="nuts",
            num_samples=10,
            seed=0,
            progress=False,
        )


# -------------------------------------------------------------------------- dtype


def float64_model():
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
    with pyro.plate("data", 4):
        pyro.sample("y", dist.Normal(mu, torch.tensor(0.5, dtype=torch.float64)))


def test_float64_model():
    y = torch.tensor([0.1, 0.4, -0.2, 0.3], dtype=torch.float64)
    problem = Problem(float64_model, {"y": y})
    assert problem.dtype == torch.float64
    values = problem.sample_prior(5)
    assert values["mu"].dtype == torch.float64
    log_likelihood = problem.log_likelihood(values)
    assert log_likelihood.dtype == torch.float64
    expected = torch.stack([dist.Normal(m, 0.5).log_prob(y).sum() for m in values["mu"]])
    assert_close(log_likelihood, expected)
    assert problem.log_joint(values).dtype == torch.float64
    assert problem.pointwise_log_likelihood(values)["y"].dtype == torch.float64

    post = condgen.condition(
        float64_model, {"y": y}, method="svi", num_steps=50, num_samples=20, seed=0, progress=False
    )
    assert post.samples["mu"].dtype == torch.float64
    assert post.samples["mu"].shape == (1, 20)
    assert post.log_likelihood()["y"].dtype == torch.float64


def test_tracing_a_path_prior_solves_no_ode(monkeypatch):
    """A path prior's log-density is an ODE solve (seconds for a digits prior): learning the
    model's shapes must not evaluate it, and the shapes still follow the plates."""
    from condgen.priors import MLP, FlowMatchingPrior

    prior = FlowMatchingPrior(MLP(2), event_shape=(2,))

    def no_ode(*args, **kwargs):
        raise AssertionError("log_prob of the path prior was evaluated while tracing")

    monkeypatch.setattr(FlowMatchingPrior, "log_prob", no_ode)

    def model():
        with pyro.plate("n", 3):
            x = pyro.sample("x", prior)
            pyro.sample("y", dist.Normal(x[..., :1], 0.2).to_event(1))

    problem = condgen.Problem(model, {"y": torch.zeros(3, 1)})
    assert problem.latent_sites["x"].shape == (3, 2)
    assert problem.log_likelihood({"x": torch.zeros(5, 3, 2)}).shape == (5,)
