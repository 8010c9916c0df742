"""Tests of DiffusionPrior.from_diffusers: diffusers' own DDIM loop reproduced by condgen's
sampler through the adapter, and the prior conditioned by condgen's path methods. Small
UNets with random weights, built from their constructors: nothing is downloaded."""

import pytest

diffusers = pytest.importorskip("diffusers", reason="the optional extra condgen[diffusers]")

import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402

import condgen  # noqa: E402
from condgen.priors import DiffusionPrior  # noqa: E402
from condgen.priors.diffusers import DiscreteSchedule  # noqa: E402
from condgen.priors.samplers import DDIM, integrate  # noqa: E402


def _unet(seed: int = 0) -> torch.nn.Module:
    """A UNet2DModel on 1 x 8 x 8 images with random weights (41,609 parameters)."""
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddim_reproduces_the_diffusers_loop(prediction_type):
    """Deterministic DDIM (eta = 0) from the same start noise: condgen's DDIM step, run by
    ``integrate`` on diffusers' timesteps mapped to times (``DiscreteSchedule.times``), and
    ``DDIMScheduler.step`` on the same network give the same images. diffusers' last step
    goes to alphas_cumprod = 1 (``set_alpha_to_one``), i.e. returns its estimate of x at the
    last timestep, which is condgen's final denoising; clipping is off on both sides.

    Measured max |difference| (images up to 230 in size for epsilon, where the random network's
    noise is divided by alpha = 0.02 at timestep 900): float32 4.6e-5 (epsilon), 6e-7
    (v_prediction), 1.8e-6 (sample), all in float32. The bound 1e-4 allows for float32 rounding
    (relative 2e-7 of the images' size) amplified by 1 / alpha. float64 gives no sharper check:
    diffusers computes its coefficients in float32 from float32 alphas_cumprod (measured
    1.4e-5 for epsilon in float64)."""
    unet = _unet()
    scheduler = diffusers.DDIMScheduler(prediction_type=prediction_type, clip_sample=False)
    scheduler.set_timesteps(10)
    prior = DiffusionPrior.from_diffusers(unet, scheduler)
    assert prior.event_shape == (1, 8, 8)
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = noise
        for timestep in scheduler.timesteps:
            output = unet(expected, timestep).sample
            expected = scheduler.step(output, timestep, expected, eta=0.0).prev_sample
        grid = prior.schedule.times(scheduler.timesteps)
        x, _ = integrate(DDIM(prior.denoise, prior.schedule, eta=0.0), noise, grid)
    assert (x - expected).abs().max() < 1e-4


def test_discrete_schedule_matches_alphas_cumprod_at_every_timestep():
    """alpha_t^2 = alphas_cumprod[k] and alpha^2 + sigma^2 = 1 at t = k / (T - 1) (float64
    rounding, measured below 1e-15), and the derivatives are those of the interpolated path:
    a central difference inside an interval agrees to 1e-6 relative."""
    scheduler = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    schedule = DiscreteSchedule(scheduler.alphas_cumprod)
    t = schedule.times(torch.arange(1000)).double()
    alpha, sigma = schedule(t)
    assert torch.allclose(alpha**2, scheduler.alphas_cumprod.double(), rtol=1e-12, atol=0)
    assert torch.allclose(alpha**2 + sigma**2, torch.ones_like(t), atol=1e-12)
    t = torch.tensor([0.1234, 0.5678], dtype=torch.float64)
    h = 1e-7
    (alpha_plus, sigma_plus), (alpha_minus, sigma_minus) = schedule(t + h), schedule(t - h)
    dalpha, dsigma = schedule.derivatives(t)
    assert torch.allclose(dalpha, (alpha_plus - alpha_minus) / (2 * h), rtol=1e-6)
    assert torch.allclose(dsigma, (sigma_plus - sigma_minus) / (2 * h), rtol=1e-6)


def test_unknown_prediction_type_and_scheduler_are_refused():
    unet = _unet()
    scheduler = diffusers.DDPMScheduler(prediction_type="flow_prediction")
    with pytest.raises(ValueError, match="prediction_type"):
        DiffusionPrior.from_diffusers(unet, scheduler)
    with pytest.raises(ValueError, match="alphas_cumprod"):
        DiffusionPrior.from_diffusers(unet, object())


Y = torch.zeros(2, 1, 4, 8)  # the top half of two images, observed with noise 0.5


def _model(prior, plate: bool):
    def model():
        if plate:
            with pyro.plate("images", 2):
                x = pyro.sample("x", prior)
                pyro.sample("y", dist.Normal(x[..., :4, :], 0.5).to_event(3), obs=Y)
        else:
            x = pyro.sample("x", prior)
            pyro.sample("y", dist.Normal(x[..., :4, :], 0.5).to_event(3), obs=Y[0])

    return model


@pytest.mark.parametrize(
    ("method", "plate"),
    [("dps", False), ("dps", True), ("pigdm", True), ("tds", True), ("smc", False)],
)
def test_path_methods_condition_a_diffusers_prior(method, plate):
    """Inpainting-shaped observations of a diffusers prior: every method returns finite
    draws of the site's shape, with and without a plate of two images. SMC is run without
    the plate: its Gaussian twist flattens one event per particle and refuses a plated neural
    site for every path prior (a mixture prior fails the same way)."""
    prior = DiffusionPrior.from_diffusers(_unet(), diffusers.DDPMScheduler(), steps=4)
    options = {"moment_samples": 16} if method == "smc" else {}
    post = condgen.condition(
        _model(prior, plate),
        method=method,
        steps=5,
        num_samples=8,
        seed=0,
        progress=False,
        **options,
    )
    x = post.flatten()["x"]
    assert x.shape == (8, *((2,) if plate else ()), 1, 8, 8) and torch.isfinite(x).all()
