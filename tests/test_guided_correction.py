"""The one guided-denoiser correction of Tweedie's formula, and its limit where alpha -> 0."""

import pytest
import torch

from condgen.methods.guidance import guided_estimate
from condgen.priors import GaussianMixturePrior

MEANS = torch.tensor([[-2.0, 0.5], [1.5, 1.0]])
COVS = torch.stack(
    [torch.tensor([[0.5, 0.2], [0.2, 0.3]]), torch.tensor([[0.2, 0.0], [0.0, 0.8]])]
)
A = torch.tensor([[1.0, -0.5], [0.3, 2.0]])
Y = torch.tensor([0.4, -1.0])


def _prior(schedule: str) -> GaussianMixturePrior:
    """A two-component mixture whose components are not isotropic: its Cov[x | x_t] is not
    r_t^2 I, so the Jacobian of the denoiser is the only way to the formula's value."""
    return GaussianMixturePrior(torch.tensor([0.3, 0.7]), MEANS, COVS, schedule=schedule)


def _ell(x0: torch.Tensor) -> torch.Tensor:
    """A quadratic log-likelihood -|y - A x0|^2 / 2, one value per particle."""
    return -0.5 * (Y.to(x0) - x0 @ A.to(x0).T).pow(2).sum(-1)


def _grad_ell(x0: torch.Tensor) -> torch.Tensor:
    return (Y.to(x0) - x0 @ A.to(x0).T) @ A.to(x0)


def _states(n: int = 6) -> torch.Tensor:
    return 1.5 * torch.randn(n, 2, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("schedule", ["vp", "rectified", "cosine"])
@pytest.mark.parametrize("t", [0.3, 0.7])
def test_denoised_guidance_is_tweedies_formula_at_ordinary_times(schedule, t):
    """D' = D + sigma^2 / alpha J^T grad ell(D), with the Jacobian J of the exact mixture
    denoiser computed column by column, independently of the function's vector-Jacobian
    product (float64; tolerance the rounding of that Jacobian)."""
    prior = _prior(schedule).to(torch.float64)
    x_t, t = _states().double(), torch.tensor(t, dtype=torch.float64)
    alpha, sigma = prior.schedule(t)
    x0 = prior.denoise(x_t, t)
    expected = []
    for i in range(len(x_t)):
        jacobian = torch.autograd.functional.jacobian(lambda x: prior.denoise(x, t), x_t[i])
        expected.append(x0[i] + sigma**2 / alpha * jacobian.T @ _grad_ell(x0[i]))
    torch.testing.assert_close(guided_estimate(prior, x_t, t, _ell), torch.stack(expected))


@pytest.mark.parametrize("schedule", ["vp", "rectified"])
def test_classifier_guidance_is_the_class_conditional_denoiser(schedule):
    """For the exact noise-conditional classifier log p(k | x_t, t) of a mixture, Tweedie's
    identity gives sigma^2 / alpha grad log p(k | x_t) = E[x | x_t, k] - E[x | x_t]: the
    corrected estimate is the denoiser of component k alone, an independent closed form
    (tolerance 1e-5: the mixture's float64 copy keeps float32 rounding, measured 6e-7)."""
    prior = _prior(schedule).to(torch.float64)
    component = GaussianMixturePrior(torch.ones(1), MEANS[1:], COVS[1:], schedule=schedule).to(
        torch.float64
    )
    x_t, t = _states().double(), torch.tensor(0.6, dtype=torch.float64)

    def log_guide(x):
        return prior.component_log_probs(x, t)[..., 1]

    guided = guided_estimate(prior, x_t, t, log_guide, of="noisy")
    torch.testing.assert_close(guided, component.denoise(x_t, t), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("schedule", ["rectified", "cosine"])
def test_denoised_guidance_has_the_analytic_limit_where_alpha_vanishes(schedule):
    """At t = 1 (alpha_1 = 0 on the rectified path, a rounding error of 0 on the cosine path)
    the formula divides by zero; the function returns the limit D + r^2 grad ell(D), r_1 = 1,
    with D = E[x], the prior's mean. For N(m, I), where Cov[x | x_t] = r_t^2 I exactly, the
    formula at alpha = 1e-2 and 1e-3 approaches that limit as O(alpha) (bounded by 10 alpha,
    measured 7.0 alpha for these states: x_t enters D as alpha x_t)."""
    prior = _prior(schedule)
    x_t, one = _states(), torch.tensor(1.0)
    mean = prior.weights @ prior.means
    limit = mean + _grad_ell(mean)
    torch.testing.assert_close(guided_estimate(prior, x_t, one, _ell), limit.expand_as(x_t))

    unit = GaussianMixturePrior(torch.ones(1), MEANS[:1], torch.eye(2)[None], schedule="rectified")
    at_one = guided_estimate(unit, x_t, one, _ell)
    torch.testing.assert_close(at_one, (MEANS[0] + _grad_ell(MEANS[0])).expand_as(x_t))
    for alpha in (1e-2, 1e-3):
        near = guided_estimate(unit, x_t, torch.tensor(1 - alpha), _ell)
        assert float((near - at_one).abs().max()) < 10 * alpha


def test_noisy_guidance_is_left_out_where_alpha_vanishes():
    """A guidance of x_t carries no information at alpha = 0 (its gradient vanishes), so the
    corrected estimate is the prior's mean there, and finite."""
    prior = _prior("rectified")
    x_t, one = _states(), torch.tensor(1.0)

    def log_guide(x):
        return prior.component_log_probs(x, one)[..., 1]

    guided = guided_estimate(prior, x_t, one, log_guide, of="noisy")
    torch.testing.assert_close(guided, (prior.weights @ prior.means).expand_as(x_t))


def test_what_the_guidance_takes_is_checked():
    with pytest.raises(ValueError, match="'denoised' or 'noisy'"):
        guided_estimate(_prior("vp"), _states(), torch.tensor(0.5), _ell, of="x0")
