"""Training path priors on 2-D data: sample quality, conditional priors, classifier-free
guidance, and training errors."""

import math

import pyro
import pytest
import torch
from torch import nn

import condgen
from condgen.evaluate import sliced_wasserstein
from condgen.priors import MLP, DiffusionPrior, FlowMatchingPrior

STEPS = 6000


def two_moons(n: int, seed: int) -> torch.Tensor:
    """Standardised two moons (no scikit-learn needed)."""
    generator = torch.Generator().manual_seed(seed)
    angle = torch.rand(n, generator=generator) * math.pi
    upper = torch.rand(n, generator=generator) < 0.5
    x = torch.where(upper, angle.cos(), 1 - angle.cos())
    y = torch.where(upper, angle.sin(), 0.5 - angle.sin())
    points = torch.stack([x, y], -1) + 0.05 * torch.randn(n, 2, generator=generator)
    return (points - torch.tensor([0.5, 0.25])) / torch.tensor([0.87, 0.5])


@pytest.mark.parametrize("kind", ["diffusion", "flow-matching"])
def test_trained_prior_reproduces_two_moons(kind):
    """After 6000 steps (about 20 s on one CPU thread) the draws lie within sliced Wasserstein
    0.1 of fresh data, while the Monte Carlo floor (two fresh data sets) is about 0.02 and a
    standard normal is at 0.3: the bound separates a learned density from an untrained one."""
    torch.manual_seed(0)
    data = two_moons(20_000, seed=0)
    network = MLP(2, hidden=(128, 128, 128))
    prior = (
        DiffusionPrior(network, event_shape=(2,))
        if kind == "diffusion"
        else FlowMatchingPrior(network, event_shape=(2,))
    )
    losses = prior.fit(data, steps=STEPS, batch_size=256, progress=False)
    assert len(losses) == STEPS and sum(losses[-100:]) < sum(losses[:100])
    fresh = two_moons(2000, seed=1)
    draws = prior.sample((2000,))
    floor = sliced_wasserstein(two_moons(2000, seed=2), fresh)
    baseline = sliced_wasserstein(torch.randn(2000, 2), fresh)
    sw = sliced_wasserstein(draws, fresh)
    print(f"{kind}: sw {sw:.3f}, floor {floor:.3f}, standard normal {baseline:.3f}")
    assert sw < 0.1 < baseline


@pytest.fixture(scope="module")
def conditional_prior():
    """A flow-matching prior of two labelled Gaussians, trained with context dropout."""
    torch.manual_seed(0)
    n = 8000
    labels = torch.randint(0, 2, (n,))
    centres = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])
    data = centres[labels] + 0.5 * torch.randn(n, 2)
    context = nn.functional.one_hot(labels, 2).float()
    prior = FlowMatchingPrior(MLP(2, context=2, hidden=(128, 128)), event_shape=(2,))
    prior.fit(data, context=context, context_dropout=0.2, steps=3000, progress=False)
    return prior


def test_conditional_prior_samples_the_requested_label(conditional_prior):
    for label, side in [(0, -1.0), (1, 1.0)]:
        draws = conditional_prior.given(torch.eye(2)[label]).sample((1000,))
        assert (draws[:, 0].sign() == side).float().mean() > 0.95
    unconditional = conditional_prior.given(None).sample((2000,))
    # both components, each about half: 4 binomial standard errors of 0.5
    assert abs((unconditional[:, 0] > 0).float().mean() - 0.5) < 4 * 0.5 / math.sqrt(2000)


@pytest.mark.parametrize(
    "scale, least, sampler", [(1.0, 0.95, "ddpm"), (3.0, 0.98, "ddpm"), (3.0, 0.98, "heun")]
)
def test_classifier_free_guidance_puts_mass_on_the_class(conditional_prior, scale, least, sampler):
    """CFG is a guided denoiser: it runs with the ancestral sampler and the Heun ODE alike
    (two passes a denoiser call, and Heun calls it twice a step)."""

    def model():
        pyro.sample("x", conditional_prior.given(torch.eye(2)[1]))

    post = condgen.condition(
        model, method="cfg", scale=scale, sampler=sampler, steps=50, num_samples=1000, seed=0
    )
    x = post.samples["x"].flatten(0, 1)
    assert (x[:, 0] > 0).float().mean() > least
    calls = 50 * (2 if sampler == "heun" else 1) + 1
    assert post.stats["nfe"] == 2 * calls  # conditional and unconditional pass a call


def test_classifier_free_guidance_at_zero_is_unconditional(conditional_prior):
    def model():
        pyro.sample("x", conditional_prior.given(torch.eye(2)[1]))

    post = condgen.condition(model, method="cfg", scale=0.0, num_samples=2000, seed=0)
    right = (post.samples["x"].flatten(0, 1)[:, 0] > 0).float().mean()
    assert abs(right - 0.5) < 4 * 0.5 / math.sqrt(2000)


def test_training_errors():
    prior = DiffusionPrior(MLP(2), event_shape=(2,))
    bad = torch.randn(100, 2)
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        prior.fit(bad, steps=2, progress=False)
    with pytest.raises(ValueError, match="shape"):
        prior.fit(torch.randn(100, 3), steps=2, progress=False)

    class Exploding(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(()))

        def forward(self, x_t, t):
            return self.weight * x_t * float("nan")

    with pytest.raises(FloatingPointError, match="step"):
        DiffusionPrior(Exploding(), event_shape=(2,)).fit(torch.randn(64, 2), steps=3)
