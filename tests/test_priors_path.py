"""Tests of Gaussian paths: schedules, the exact mixture denoiser, samplers, ODE likelihoods."""

import math

import pytest
import torch

from condgen.evaluate import sliced_wasserstein
from condgen.priors import (
    CosineSchedule,
    DiffusionPrior,
    GaussianMixturePrior,
    RectifiedSchedule,
    VESchedule,
    VPSchedule,
)
from condgen.priors.counting import EvaluationCounter
from condgen.priors.schedules import build_schedule

SCHEDULES = [VPSchedule(), VESchedule(), CosineSchedule(), RectifiedSchedule()]


def mixture(schedule=None, dtype=torch.float32) -> GaussianMixturePrior:
    weights = torch.tensor([0.3, 0.7], dtype=dtype)
    means = torch.tensor([[-2.0, 0.0], [1.5, 1.0]], dtype=dtype)
    covs = torch.stack([0.3 * torch.eye(2), torch.tensor([[0.5, 0.2], [0.2, 0.4]])]).to(dtype)
    return GaussianMixturePrior(weights, means, covs, schedule=schedule)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
def test_schedule_derivatives_match_autograd(schedule):
    t = torch.linspace(0.05, 0.95, 11, dtype=torch.float64, requires_grad=True)
    alpha, sigma = schedule(t)
    assert alpha.dtype == torch.float64 and (sigma > 0).all()
    dalpha, dsigma = schedule.derivatives(t.detach())
    constant = not alpha.requires_grad  # VE: alpha = 1
    grad_alpha = torch.zeros_like(t) if constant else torch.autograd.grad(alpha.sum(), t)[0]
    (grad_sigma,) = torch.autograd.grad(sigma.sum(), t)
    torch.testing.assert_close(dalpha, grad_alpha)
    torch.testing.assert_close(dsigma, grad_sigma)
    # t = 0 is nearly clean, t = 1 nearly noise (relative to the signal)
    a0, s0 = schedule(torch.tensor(schedule.t_min))
    a1, s1 = schedule(torch.tensor(1.0))
    assert s0 / a0 < 0.05 and s1 / a1.clamp(min=1e-12) > 20


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
def test_parametrisations_round_trip(schedule):
    torch.manual_seed(0)
    x_t, x0 = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    t = torch.rand(6, dtype=torch.float64) * 0.9 + 0.05
    v = schedule.velocity(x_t, x0, t, event_dim=1)
    torch.testing.assert_close(schedule.denoiser_from_velocity(x_t, v, t, 1), x0)
    eps = schedule.noise(x_t, x0, t, event_dim=1)
    torch.testing.assert_close(schedule.denoiser_from_noise(x_t, eps, t, 1), x0)


def test_build_schedule():
    assert build_schedule("vp") == VPSchedule()
    assert build_schedule(VESchedule(sigma_max=10.0).config()) == VESchedule(sigma_max=10.0)
    with pytest.raises(ValueError, match="unknown schedule"):
        build_schedule("linear")
    with pytest.raises(ValueError, match="unknown schedule"):
        build_schedule({"name": "Nope"})


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
def test_mixture_denoiser_matches_monte_carlo(schedule):
    """E[x | x_t] by self-normalised importance sampling over exact prior draws."""
    prior = mixture(schedule, torch.float64)
    torch.manual_seed(1)
    x = prior.sample((400_000,))
    t = torch.tensor(0.3, dtype=torch.float64)
    alpha, sigma = schedule(t)
    for x_t in torch.tensor([[0.0, 0.5], [-1.5, 0.2], [2.0, 1.0]], dtype=torch.float64):
        log_w = -0.5 * ((x_t - alpha * x) / sigma).pow(2).sum(-1)
        w = torch.softmax(log_w, 0)
        estimate = w @ x
        ess = 1 / (w**2).sum()
        sd = (w @ (x - estimate) ** 2).sqrt()
        exact = prior.denoise(x_t, t)
        assert ((exact - estimate).abs() < 5 * sd / ess.sqrt() + 1e-3).all()


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
def test_mixture_score_is_gradient_of_noised_density(schedule):
    """Tweedie: the score from the denoiser equals grad log p_t, with p_t in closed form."""
    prior = mixture(schedule, torch.float64)
    torch.manual_seed(2)
    x_t = torch.randn(7, 2, dtype=torch.float64, requires_grad=True)
    t = torch.rand(7, dtype=torch.float64) * 0.9 + 0.05
    (grad,) = torch.autograd.grad(prior.log_prob_t(x_t, t).sum(), x_t)
    torch.testing.assert_close(prior.score(x_t.detach(), t), grad)
    # and log p_t at one time equals the MixtureSameFamily it defines
    torch.testing.assert_close(
        prior.log_prob_t(x_t.detach(), t[0]), prior.mixture(t[0]).log_prob(x_t.detach())
    )


@pytest.mark.parametrize("diagonal", [False, True], ids=["full", "diagonal"])
def test_mixture_denoise_covariance_is_tweedie(diagonal):
    """Cov[x | x_t] of the mixture equals Tweedie's second-order formula (sigma^2 / alpha) dD/dx_t,
    with the Jacobian of the exact denoiser by autograd, and is symmetric positive definite."""
    prior = mixture(VPSchedule(), torch.float64)
    if diagonal:
        prior = GaussianMixturePrior(prior.weights, prior.means, torch.diag_embed(
            prior.covs.diagonal(dim1=-2, dim2=-1)), schedule=VPSchedule())  # fmt: skip
    torch.manual_seed(3)
    x_t, t = torch.randn(5, 2, dtype=torch.float64), torch.tensor(0.4, dtype=torch.float64)
    alpha, sigma = prior.schedule(t)
    jacobian = torch.stack(
        [torch.autograd.functional.jacobian(lambda x: prior.denoise(x, t), x) for x in x_t]
    )
    covariance = prior.denoise_covariance(x_t, t)
    torch.testing.assert_close(covariance, sigma**2 / alpha * jacobian)
    assert (torch.linalg.eigvalsh(covariance) > 0).all()


def _floor(prior, n, seed):
    torch.manual_seed(seed)
    return sliced_wasserstein(prior.sample((n,)), prior.sample((n,)))


@pytest.mark.parametrize(
    "sampler, coarse, fine",
    [("euler", 4, 128), ("heun", 2, 32), ("ddim", 4, 64), ("ddpm", 8, 256)],
)
def test_samplers_reproduce_mixture(sampler, coarse, fine):
    """With the exact denoiser, a sampler's draws approach exact draws as steps grow: at the
    fine grid their sliced Wasserstein distance to exact draws is within twice the distance
    between two independent exact sample sets (the Monte Carlo floor)."""
    prior = mixture(VPSchedule())
    n = 10_000
    floor = _floor(prior, n, 0)
    torch.manual_seed(3)
    exact = prior.sample((n,))
    with EvaluationCounter() as counter:
        fine_draws = prior.sample((n,), sampler=sampler, steps=fine)
        coarse_draws = prior.sample((n,), sampler=sampler, steps=coarse)
    assert not fine_draws.requires_grad and fine_draws.shape == (n, 2)
    per_step = 2 if sampler == "heun" else 1
    assert counter.evaluations == n * (per_step * (fine + coarse) + 2)  # + final denoise each
    sw_fine = sliced_wasserstein(fine_draws, exact)
    sw_coarse = sliced_wasserstein(coarse_draws, exact)
    assert sw_fine < 2 * floor
    assert sw_fine < sw_coarse


def test_ode_log_prob_matches_exact_mixture_density():
    """The probability-flow ODE log-density of a DiffusionPrior whose denoiser is the exact
    mixture denoiser equals the exact mixture log-density (up to solver tolerance and the
    sigma(t_min) ~ 0.01 smoothing at the start time)."""
    exact = mixture(VPSchedule(), torch.float64)
    prior = DiffusionPrior(exact.denoise, schedule=exact.schedule, event_shape=(2,))
    torch.manual_seed(4)
    x = exact.sample((6,))
    ode = prior.log_prob(x, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(ode, exact.log_prob(x), atol=0.02, rtol=0)


def test_ode_log_prob_hutchinson_is_unbiased():
    """Hutchinson's divergence gives noisy log-densities whose mean is the exact one."""
    exact = mixture(CosineSchedule(), torch.float64)
    prior = DiffusionPrior(
        exact.denoise, schedule=exact.schedule, event_shape=(2,), exact_divergence=False
    )
    x = exact.sample((1,)).expand(400, 2)
    generator = torch.Generator().manual_seed(5)
    estimates = prior.log_prob(x, atol=1e-6, rtol=1e-5, generator=generator)
    se = estimates.std() / math.sqrt(len(estimates))
    assert estimates.std() > 0
    assert (estimates.mean() - exact.log_prob(x[0])).abs() < 4 * se + 0.02


def test_ode_log_prob_has_gradients():
    """Gradients of the ODE log-density with respect to x flow through zuko's adjoint and
    match the exact score of the mixture at t = 0."""
    exact = mixture(VPSchedule(), torch.float64)
    prior = DiffusionPrior(exact.denoise, schedule=exact.schedule, event_shape=(2,))
    x = torch.tensor([[0.5, 0.5], [-2.0, 0.1]], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(prior.log_prob(x, atol=1e-7, rtol=1e-6).sum(), x)
    (expected,) = torch.autograd.grad(exact.log_prob(x).sum(), x)
    torch.testing.assert_close(grad, expected, atol=0.05, rtol=0.05)


def test_dtype_follows_parameters():
    prior = mixture(VPSchedule(), torch.float64)
    assert prior.sample((3,)).dtype == torch.float64
    assert prior.sample((3,), sampler="ddim", steps=4).dtype == torch.float64
    assert prior.denoise(torch.zeros(3, 2, dtype=torch.float64), 0.5).dtype == torch.float64


def test_bad_input():
    prior = mixture()
    with pytest.raises(ValueError, match="event shape"):
        prior.denoise(torch.zeros(4, 3), 0.5)
    with pytest.raises(ValueError, match="event shape"):
        prior.log_prob(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="broadcast"):
        prior.denoise(torch.zeros(4, 2), torch.rand(3))
    with pytest.raises(ValueError, match="unknown sampler"):
        prior.sample((2,), sampler="rk4")
    with pytest.raises(ValueError, match="steps"):
        prior.sample((2,), sampler="heun", steps=0)
    with pytest.raises(ValueError, match="unknown schedule"):
        GaussianMixturePrior(torch.ones(1), torch.zeros(1, 2), torch.eye(2)[None], "linear")
    with pytest.raises(ValueError, match="covs"):
        GaussianMixturePrior(torch.ones(1), torch.zeros(1, 2), torch.eye(3)[None])
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixturePrior(torch.ones(1), torch.zeros(1, 2), -torch.eye(2)[None])
    with pytest.raises(ValueError, match="weights"):
        GaussianMixturePrior(-torch.ones(1), torch.zeros(1, 2), torch.eye(2)[None])
    with pytest.raises(ValueError, match="prediction"):
        DiffusionPrior(prior.denoise, event_shape=(2,), prediction="score")
    with pytest.raises(ValueError, match="event_shape"):
        DiffusionPrior(prior.denoise)


@pytest.mark.parametrize("diagonal", [True, False])
def test_mixture_density_and_draws_match_torch(diagonal):
    """The eigenbasis computations agree with torch's MixtureSameFamily: log-density exactly,
    draws in mean and covariance within Monte Carlo error (4 standard errors)."""
    torch.manual_seed(6)
    k, d = 3, 4
    a = torch.randn(k, d, d, dtype=torch.float64)
    covs = a @ a.mT / d + 0.5 * torch.eye(d, dtype=torch.float64)
    if diagonal:
        covs = torch.diag_embed(covs.diagonal(dim1=-2, dim2=-1))
    means = 2 * torch.randn(k, d, dtype=torch.float64)
    prior = GaussianMixturePrior(torch.tensor([0.2, 0.3, 0.5]).double(), means, covs)
    x = 2 * torch.randn(50, d, dtype=torch.float64)
    torch.testing.assert_close(prior.log_prob(x), prior.mixture().log_prob(x))
    n = 100_000
    draws = prior.sample((n,))
    reference = prior.mixture()
    sd = reference.variance.sqrt()
    assert ((draws.mean(0) - reference.mean).abs() < 4 * sd / math.sqrt(n)).all()
    cov = torch.cov(draws.T)
    true_cov = (prior.weights[:, None, None] * (covs + means[:, :, None] * means[:, None, :])).sum(
        0
    ) - reference.mean[:, None] * reference.mean[None, :]
    # the variance of a sample covariance entry is at most (s_ii s_jj + s_ij^2) kurtosis / n;
    # mixtures have heavier tails than a Gaussian, so allow a factor 3 on that variance
    bound = 4 * ((3 * (sd[:, None] ** 2 * sd[None, :] ** 2 + true_cov**2)) / n).sqrt()
    assert ((cov - true_cov).abs() < bound).all()


def test_isotropic_fast_path_matches_the_general_one():
    """Components c_k I take matrix products; a tiny off-diagonal entry forces the eigenbasis
    path on the same mixture: denoiser, noised density and classifier agree."""
    torch.manual_seed(7)
    k, d = 5, 6
    means = 3 * torch.randn(k, d, dtype=torch.float64)
    c = torch.rand(k, dtype=torch.float64) + 0.2
    eye = torch.eye(d, dtype=torch.float64)
    fast = GaussianMixturePrior(torch.rand(k).double(), means, c[:, None, None] * eye)
    covs = c[:, None, None] * eye
    covs[:, 0, 1] = covs[:, 1, 0] = 1e-12
    general = GaussianMixturePrior(fast.weights, means, covs)
    assert fast._isotropic and not general._diagonal
    x = 3 * torch.randn(40, d, dtype=torch.float64)
    t = torch.rand(40, dtype=torch.float64) * 0.9 + 0.05
    torch.testing.assert_close(fast.denoise(x, t), general.denoise(x, t))
    torch.testing.assert_close(fast.log_prob_t(x, t), general.log_prob_t(x, t))
    torch.testing.assert_close(fast.component_log_probs(x, t), general.component_log_probs(x, t))
    torch.testing.assert_close(fast.log_prob(x), general.log_prob(x))
