r"""Tests of condgen.priors.FlowPrior: shapes under plates, exactness of the log-density (it
integrates to one, and agrees with the draws), maximum-likelihood fitting against a known
Gaussian, conditional priors, input validation and use inside Pyro models.

Statistical checks use importance-sampling identities whose Monte Carlo standard error is
estimated from the same draws; tolerances are a few standard errors.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import zuko
from torch import nn
from torch.testing import assert_close

import condgen
from condgen.priors import FlowPrior, Prior
from condgen.priors.flow import FLOW_CLASSES

NUM_SE = 5.0  # tolerance of Monte Carlo checks, in standard errors


@pytest.fixture(autouse=True)
def _seed():
    pyro.set_rng_seed(0)
    yield


def small(flow: str = "nsf", **options) -> FlowPrior:
    options.setdefault("hidden_features", [16, 16])
    options.setdefault("transforms", 2)
    return FlowPrior.build(2, flow=flow, **options)


def assert_mc_close(values: torch.Tensor, expected: float) -> None:
    mean, se = values.mean().item(), values.std().item() / math.sqrt(values.numel())
    assert abs(mean - expected) < NUM_SE * se + 1e-6, (mean, se, expected)


# ---------------------------------------------------------------------------- construction


def test_build_config_is_plain_and_names_resolve():
    prior = FlowPrior.build(3, context=2, flow="MAF", hidden_features=(8,), activation=nn.ELU)
    assert isinstance(prior, Prior) and prior.has_rsample
    assert isinstance(prior.flow, zuko.flows.MAF)
    assert prior.event_shape == (3,) and prior.batch_shape == ()
    assert prior.config == {
        "flow": "maf",
        "features": 3,
        "context": 2,
        "hidden_features": [8],
        "activation": "ELU",
    }
    assert prior.context_features == 2
    assert FlowPrior.build(2, activation="Tanh").config["activation"] == "Tanh"


@pytest.mark.parametrize("name", sorted(FLOW_CLASSES))
def test_every_flow_name_builds(name):
    prior = FlowPrior.build(2, flow=name)
    assert type(prior.flow) is FLOW_CLASSES[name] and prior.event_shape == (2,)


def test_build_and_constructor_errors():
    with pytest.raises(ValueError, match="unknown flow"):
        FlowPrior.build(2, flow="glow")
    with pytest.raises(ValueError, match="unknown activation"):
        FlowPrior.build(2, activation="NotAnActivation")
    with pytest.raises(ValueError, match="features"):
        FlowPrior.build(0)
    with pytest.raises(TypeError, match="zuko flow"):
        FlowPrior(lambda c=None: None)
    with pytest.raises(ValueError, match="event_shape"):
        FlowPrior(zuko.flows.NSF(4), event_shape=(2, 2))


def test_event_shape_inferred_from_a_plain_zuko_flow():
    prior = FlowPrior(zuko.flows.RealNVP(3))
    assert prior.event_shape == (3,) and prior.config is None
    assert prior.sample((4,)).shape == (4, 3)


# ------------------------------------------------------------------------------ densities


def test_shapes_under_plates_and_nfe():
    prior = small()
    x = torch.randn(4, 1, 5, 2)
    log_p = prior.log_prob(x)
    assert log_p.shape == (4, 1, 5)
    assert_close(log_p, prior.flow().log_prob(x.reshape(-1, 2)).reshape(4, 1, 5))
    assert prior.log_prob(torch.zeros(2)).shape == ()
    assert prior.sample().shape == (2,) and prior.sample((3, 4)).shape == (3, 4, 2)
    assert not prior.sample((3,)).requires_grad
    draws = prior.rsample((8,))
    draws.sum().backward()  # reparametrised: gradients reach the flow's parameters
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in prior.flow.parameters())
    with pytest.raises(ValueError, match="event shape"):
        prior.log_prob(torch.zeros(5, 3))


@pytest.mark.parametrize("name", ["nsf", "maf", "realnvp"])
def test_log_prob_integrates_to_one(name):
    # E_q[p(x) / q(x)] = 1 for a wide Gaussian proposal q
    prior = small(name)
    with torch.no_grad():  # perturb the weights so that the flow is far from the identity
        for p in prior.flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    proposal = dist.Normal(torch.zeros(2), 3.0).to_event(1)
    x = proposal.sample((20000,))
    with torch.no_grad():
        ratio = (prior.log_prob(x) - proposal.log_prob(x)).exp()
    assert_mc_close(ratio, 1.0)


def test_draws_follow_log_prob():
    # E_p[q(x) / p(x)] = 1 for draws x ~ p and a density q: draws and density agree
    prior = small("nsf")
    with torch.no_grad():
        for p in prior.flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
        x = prior.sample((20000,))
        target = dist.Normal(torch.zeros(2), 1.0).to_event(1)
        ratio = (target.log_prob(x) - prior.log_prob(x)).exp()
    assert_mc_close(ratio, 1.0)


# -------------------------------------------------------------------------------- fitting


def test_fit_recovers_a_gaussian():
    cov = torch.tensor([[1.0, 0.6], [0.6, 0.8]])
    target = dist.MultivariateNormal(torch.tensor([0.5, -0.3]), cov)
    train, test = target.sample((4000,)), target.sample((4000,))
    prior = small("maf", hidden_features=[32, 32])
    losses = prior.fit(train, steps=300, batch_size=256, lr=3e-3, progress=False)
    assert len(losses) == 300 and losses[-1] < losses[0]
    with torch.no_grad():
        gap = target.log_prob(test) - prior.log_prob(test)  # its mean estimates KL(target||flow)
    kl, se = gap.mean().item(), gap.std().item() / math.sqrt(len(gap))
    assert kl < 0.03 + NUM_SE * se, (kl, se)


def test_fit_moves_the_flow_to_the_data_dtype():
    prior = small("realnvp")
    prior.fit(torch.randn(64, 2, dtype=torch.float64), steps=3, progress=False)
    assert all(p.dtype == torch.float64 for p in prior.flow.parameters())
    assert prior.sample((5,)).dtype == torch.float64


def test_fit_validation():
    prior = small()
    with pytest.raises(ValueError, match="NaN or infinite"):
        prior.fit(torch.tensor([[0.0, 1.0], [math.nan, 0.0]]), steps=1, progress=False)
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        prior.fit(torch.randn(10, 3), steps=1, progress=False)
    with pytest.raises(ValueError, match="fit needs context"):
        FlowPrior.build(2, context=1).fit(torch.randn(10, 2), steps=1, progress=False)
    with pytest.raises(ValueError, match="context"):
        FlowPrior.build(2, context=1).fit(
            torch.randn(10, 2), context=torch.randn(9, 1), steps=1, progress=False
        )


class _NaNFlow(zuko.lazy.LazyDistribution):
    def __init__(self):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(2))

    def forward(self, c=None):
        return dist.Normal(self.loc * math.nan, 1.0, validate_args=False).to_event(1)


def test_fit_raises_on_nan_loss_naming_the_step():
    prior = FlowPrior(_NaNFlow(), event_shape=(2,))
    with pytest.raises(FloatingPointError, match="step 0"):
        prior.fit(torch.randn(10, 2), steps=5, progress=False)


# ---------------------------------------------------------------------------- conditional


def test_conditional_fit_and_given():
    # x | c ~ N(c * [1, -1], 0.5^2 I), c ~ U(-1, 1)
    c = 2 * torch.rand(8000, 1) - 1
    x = c * torch.tensor([1.0, -1.0]) + 0.5 * torch.randn(8000, 2)
    prior = FlowPrior.build(2, context=1, flow="maf", hidden_features=[32, 32], transforms=2)
    prior.fit(x[:4000], context=c[:4000], steps=300, lr=3e-3, progress=False)
    with pytest.raises(ValueError, match="given"):
        prior.sample()
    with pytest.raises(ValueError, match="features"):
        prior.given(torch.zeros(2))

    # held-out E[log p(x | c) - log q(x | c)] estimates the expected KL
    exact = dist.Normal(c[4000:] * torch.tensor([1.0, -1.0]), 0.5).to_event(1)
    with torch.no_grad():
        gap = exact.log_prob(x[4000:]) - prior.given(c[4000:]).log_prob(x[4000:])
    kl, se = gap.mean().item(), gap.std().item() / math.sqrt(len(gap))
    assert kl < 0.04 + NUM_SE * se, (kl, se)

    conditional = prior.given(torch.tensor([0.8]))
    assert conditional.batch_shape == () and conditional.flow is prior.flow
    torch.manual_seed(1)
    draws = conditional.sample((5,))
    torch.manual_seed(1)
    assert torch.equal(draws, prior.flow(torch.tensor([0.8])).sample((5,)))
    assert_close(conditional.log_prob(draws), prior.flow(torch.tensor([0.8])).log_prob(draws))

    batched = prior.given(torch.tensor([[-0.5], [0.0], [0.5]]))
    assert batched.batch_shape == (3,)
    assert batched.sample((7,)).shape == (7, 3, 2)
    values = torch.randn(6, 1, 2)
    log_p = batched.log_prob(values)
    assert log_p.shape == (6, 3)
    assert_close(log_p[:, 1], prior.given(torch.zeros(1)).log_prob(values[:, 0]))


# --------------------------------------------------------------------------------- in Pyro


def test_pyro_model_with_a_flow_prior():
    prior = small("realnvp")
    y = torch.tensor([1.0, 0.5])

    def model():
        x = pyro.sample("x", prior)
        with pyro.plate("data", 3):
            pyro.sample("y", dist.Normal(x, 0.5).to_event(1), obs=y.expand(3, 2))

    problem = condgen.Problem(model)
    assert problem.latent_sites["x"].neural
    problem = condgen.Problem(model, data={"y": y.expand(3, 2)})
    values = {"x": torch.randn(8, 2)}
    with torch.no_grad():
        likelihood = dist.Normal(values["x"][:, None], 0.5).log_prob(y.expand(3, 2))
        expected = prior.log_prob(values["x"]) + likelihood.sum((-2, -1))
        assert_close(problem.log_joint(values), expected)

    posterior = condgen.condition(
        model,
        data={"y": y.expand(3, 2)},
        method="nuts",
        num_samples=40,
        num_chains=1,
        warmup_steps=40,
        seed=0,
        progress=False,
    )
    assert posterior.samples["x"].shape == (1, 40, 2)
    assert torch.isfinite(posterior.samples["x"]).all()
