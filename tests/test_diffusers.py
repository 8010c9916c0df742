"""Tests of DiffusionPrior.from_diffusers: diffusers' own DDIM and DDPM loops reproduced by
condgen's sampler through the adapter (draw by draw, and in distribution against
``DDPMPipeline``), save and load, and the prior conditioned by condgen's path methods and by
particle Gibbs, against held-out digits. Small UNets with random weights built from their
constructors, and the UNet shipped with condgen (``digits_unet_prior``, trained on the
digits by benchmarks/diffusers_digits.py): nothing is downloaded."""

import copy
import functools
import sys
import warnings

import pytest

diffusers = pytest.importorskip("diffusers", reason="the optional extra condgen[diffusers]")

import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402

import condgen  # noqa: E402
from condgen.diagnostics import ConvergenceWarning  # noqa: E402
from condgen.evaluate.digits import digits_data, digits_unet_prior  # noqa: E402
from condgen.methods import DPS, SMC  # noqa: E402
from condgen.priors import DiffusionPrior, load  # noqa: E402
from condgen.priors.diffusers import DiscreteSchedule, sample_on_timesteps  # noqa: E402
from condgen.priors.samplers import DDIM, integrate  # noqa: E402


@functools.cache
def _digits_unet_config() -> dict:
    """The configuration of the shipped digits UNet (written by benchmarks/diffusers_digits.py)."""
    return dict(digits_unet_prior().network.unet.config)


def _unet(seed: int = 0) -> torch.nn.Module:
    """A UNet2DModel on 1 x 8 x 8 images of the shipped digits UNet's architecture, with random
    weights (41,609 parameters)."""
    torch.manual_seed(seed)
    return diffusers.UNet2DModel.from_config(_digits_unet_config()).eval()


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


# ------------------------------------------------------------------------------ save, load


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_save_and_load_give_back_the_same_prior(tmp_path, prediction_type):
    """prior.save writes condgen's prior file of plain data (read with weights_only=True): the
    UNet's diffusers class and config, the prediction type and alphas_cumprod; load rebuilds
    a UNet of the same class, config and weights, the same schedule and sampler options, and
    the same seed gives the same draws, exactly (the same float32 computation)."""
    scheduler = diffusers.DDPMScheduler(
        beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type
    )
    prior = DiffusionPrior.from_diffusers(_unet(3), scheduler, sampler="ddpm", steps=6)
    path = tmp_path / "prior.pt"
    prior.save(path)
    document = torch.load(path, weights_only=True)
    entry = document["config"]["network"]
    assert (document["format"], document["class"]) == ("condgen-prior", "DiffusionPrior")
    assert (entry["class"], entry["prediction_type"]) == ("UNet2DModel", prediction_type)
    loaded = load(path)
    unet, saved = loaded.network.unet, prior.network.unet
    assert type(unet) is diffusers.UNet2DModel and not unet.training
    public = {k: v for k, v in saved.config.items() if not k.startswith("_")}
    assert {k: v for k, v in unet.config.items() if not k.startswith("_")} == public
    for (name, a), (other, b) in zip(
        unet.state_dict().items(), saved.state_dict().items(), strict=True
    ):
        assert name == other and torch.equal(a, b)
    assert loaded.schedule.alphas_cumprod == prior.schedule.alphas_cumprod
    assert (loaded.sampler, loaded.steps, loaded.event_shape) == ("ddpm", 6, (1, 8, 8))
    assert loaded.network.prediction_type == prediction_type
    draws = [p.sample((5,), generator=torch.Generator().manual_seed(7)) for p in (prior, loaded)]
    assert torch.equal(*draws)
    other = torch.Generator().manual_seed(8)
    assert not torch.equal(draws[0], loaded.sample((5,), generator=other))


def test_loading_a_diffusers_prior_without_diffusers_names_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "prior.pt"
    DiffusionPrior.from_diffusers(_unet(), diffusers.DDPMScheduler()).save(path)
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers: ImportError
    with pytest.raises(ImportError, match=r"pip install condgen\[diffusers\]"):
        load(path)


def test_a_diffusers_denoiser_on_another_schedule_is_not_saved(tmp_path):
    prior = DiffusionPrior.from_diffusers(_unet(), diffusers.DDPMScheduler())
    other = DiffusionPrior(prior.network, "vp", event_shape=(1, 8, 8))
    with pytest.raises(TypeError, match="from_diffusers"):
        other.save(tmp_path / "prior.pt")


# ---------------------------------------------------- DDPM on the shipped digits UNet


@pytest.fixture(scope="module")
def digits_prior():
    return digits_unet_prior()


def _pipeline(prior, num: int, steps: int, seed: int) -> torch.Tensor:
    """DDPMPipeline draws of the prior's UNet (no clipping), mapped from [0, 1] to [-1, 1]."""
    scheduler = diffusers.DDPMScheduler(clip_sample=False)
    pipeline = diffusers.DDPMPipeline(unet=prior.network.unet, scheduler=scheduler)
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        images = pipeline(num, generator, num_inference_steps=steps, output_type="pt").images
    return images * 2 - 1


def _timesteps(steps: int) -> torch.Tensor:
    scheduler = diffusers.DDPMScheduler(clip_sample=False)
    scheduler.set_timesteps(steps)
    return scheduler.timesteps


def test_ddpm_follows_the_pipeline_draw_by_draw(digits_prior):
    """From the same generator, sample_on_timesteps draws the start noise and each step's noise
    in the order DDPMPipeline does (one randn of the batch at the start and at every step but
    the last), so that the draws agree one by one. Measured max |difference| 7.3e-6 in float32
    (50 steps, images in [-1, 1]); the bound 1e-4 allows for float32 rounding. The shipped
    scheduler is diffusers' default DDPMScheduler, whose alphas_cumprod the prior holds."""
    scheduler = diffusers.DDPMScheduler(clip_sample=False)
    assert torch.allclose(
        torch.tensor(digits_prior.schedule.alphas_cumprod, dtype=torch.float64),
        scheduler.alphas_cumprod.double(),
    )
    expected = _pipeline(digits_prior, 16, 50, seed=0)
    generator = torch.Generator().manual_seed(0)
    x = sample_on_timesteps(digits_prior, _timesteps(50), (16,), generator=generator)
    assert x.shape == (16, 1, 8, 8)
    assert (x.clamp(-1, 1) - expected).abs().max() < 1e-4


def _c2st(x: torch.Tensor, y: torch.Tensor) -> float:
    """Classifier two-sample test: the 5-fold cross-validated accuracy of scikit-learn's
    HistGradientBoostingClassifier (default settings, one thread) telling ``x`` from ``y``,
    equal numbers of draws; 0.5 when it cannot tell them apart. Its sampling sd at 0.5 is
    sqrt(0.25 / (2 N)), 0.008 for N = 2000."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from threadpoolctl import threadpool_limits

    inputs = torch.cat([x.flatten(1), y.flatten(1)]).double().numpy()
    labels = [0] * len(x) + [1] * len(y)
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    with threadpool_limits(1):
        scores = cross_val_score(
            HistGradientBoostingClassifier(random_state=0), inputs, labels, cv=folds
        )
    return float(scores.mean())


class _WithoutFinalDenoising(DDIM):
    """DDPM that returns its last point as it is, without the final denoising."""

    def finish(self, state: dict, t: torch.Tensor) -> torch.Tensor:
        return state["x"]


def test_ddpm_matches_the_ddpm_pipeline_in_distribution(digits_prior):
    """2000 DDPM draws through the adapter (sample_on_timesteps) against 2000 of diffusers'
    DDPMPipeline, other seeds, both on the 20 timesteps 950, 900, ..., 0 of
    set_timesteps(20) (1000 steps each side cost 170 s on one core: benchmarks/
    diffusers_digits.py measures those with condgen's own C2ST): the classifier two-sample
    test cannot tell them apart, C2ST <= 0.55 (measured 0.505; its sd at 0.5 is 0.008).

    The test can fail: stopping one step early, at timestep 50 without the final denoising
    (noise of sd 0.14 left on the image), gives a C2ST of 0.99 (measured on 2000 draws;
    here 1000), far above 0.55. The test is that sensitive: deterministic DDIM on the same
    20 timesteps, a different sampler of the same model, measured 0.64."""
    timesteps = _timesteps(20)
    expected = _pipeline(digits_prior, 2000, 20, seed=1)
    generator = torch.Generator().manual_seed(2)
    x = sample_on_timesteps(digits_prior, timesteps, (2000,), generator=generator)
    assert _c2st(x.clamp(-1, 1), expected) <= 0.55

    generator = torch.Generator().manual_seed(3)
    schedule = digits_prior.schedule
    step = _WithoutFinalDenoising(digits_prior.denoise, schedule, eta=1.0, generator=generator)
    with torch.no_grad():
        noise = torch.randn(1000, 1, 8, 8, generator=generator)
        early, _ = integrate(step, noise, schedule.times(timesteps[:-1]))
    assert _c2st(early.clamp(-1, 1), expected[:1000]) > 0.75


# --------------------------------------------- inpainting held-out digits, unknown noise

NOISE = 0.15  # the true noise scale of the observed top half


def _digits(count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first test digit of each class 0, ..., count - 1 (shaped [count, 1, 8, 8]), their
    top halves observed with noise NOISE (seed 0), and the training digits' mean image."""
    test, labels = digits_data("test", labels=True)
    index = torch.stack([(labels == c).nonzero()[0, 0] for c in range(count)])
    truth = test[index].reshape(-1, 1, 8, 8)
    noise = torch.randn(count, 1, 4, 8, generator=torch.Generator().manual_seed(0))
    return truth, truth[..., :4, :] + NOISE * noise, digits_data("train").mean(0).view(1, 8, 8)


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).flatten(-3).mean(-1).sqrt()


def _inpainting(prior, y: torch.Tensor, noise: float | None = None, plate: int = 0):
    """x ~ the prior (1x8x8), s ~ HalfNormal(0.5) (or s = noise), y ~ N(top half of x, s^2),
    for one digit or a plate of them."""

    def model():
        s = pyro.sample("s", dist.HalfNormal(0.5)) if noise is None else torch.tensor(noise)
        scale = s[..., None, None, None]
        if plate:
            with pyro.plate("digits", plate):
                x = pyro.sample("x", prior)
                pyro.sample("y", dist.Normal(x[..., :4, :], scale[..., None]).to_event(3))
        else:
            x = pyro.sample("x", prior)
            pyro.sample("y", dist.Normal(x[..., :4, :], scale).to_event(3))

    return model, {"y": y}


@pytest.mark.parametrize("method", ["dps", "smc"])
def test_dps_and_smc_refuse_an_unknown_noise_scale(digits_prior, method):
    _, y, _ = _digits(1)
    prior = copy.copy(digits_prior)
    prior.steps = 2  # the model is traced with prior draws before the refusal
    model, data = _inpainting(prior, y[0])
    with pytest.raises(ValueError, match="method='gibbs'"):
        condgen.condition(model, data, method=method, steps=2, num_samples=4, progress=False)


def _fast(prior):
    """The prior with 25 sampler steps (SMC estimates its moments from draws)."""
    prior = copy.copy(prior)
    prior.steps = 25
    return prior


@pytest.mark.parametrize("method", ["dps", "smc"])
def test_dps_and_smc_inpaint_held_out_digits(digits_prior, method):
    """The first test digit of each class, its top half observed with known noise 0.15, each
    conditioned alone (25 steps, 100 draws, seed 1). Against the held-out truth: the posterior
    mean's error on the hidden bottom half, averaged over the ten digits, is below 0.93 times
    that of the training digits' mean image (the prior's unconditional mean, 0.549; measured
    0.460 for DPS and 0.406 for SMC, and 0.444 and 0.454 with 200 draws and seed 0: the
    threshold 0.510 is one such seed-to-seed change above the worse), and on every digit the
    posterior mean is within 2 noise sd of the observation on the observed pixels (RMS; measured
    at most 0.19 against 0.30). A single digit's posterior may rightly miss it (the top half
    of a 3 or a 5 fits other digits too), so the error is averaged over the classes."""
    truth, y, mean = _digits(10)
    prior = _fast(digits_prior)
    sampler = DPS(steps=25) if method == "dps" else SMC(steps=25, moment_samples=256)
    errors = []
    for i in range(10):
        model, data = _inpainting(prior, y[i], noise=NOISE)
        post = condgen.condition(model, data, method=sampler, num_samples=100, seed=1,
                                 progress=False)  # fmt: skip
        m, _ = post.moments("x")
        assert m.shape == (1, 8, 8)
        errors.append(_rms(m[..., 4:, :] - truth[i, :, 4:]))
        assert _rms(m[..., :4, :] - y[i]) < 2 * NOISE
    baseline = _rms(mean[..., 4:, :] - truth[..., 4:, :]).mean()
    assert torch.stack(errors).mean() < 0.93 * baseline


@pytest.mark.parametrize("method", ["dps", "smc"])
def test_dps_and_smc_inpaint_digits_in_a_plate(digits_prior, method):
    """A 0 and a 1 in pyro.plate, each with its own observed top half: each posterior mean is
    within 3 noise sd of its own observation (RMS over the observed pixels; measured 0.22 for
    DPS, 0.14 for SMC, both digits together) and less than half as far from it as from the
    other digit's (0.75 apart)."""
    _, y, _ = _digits(2)
    model, data = _inpainting(_fast(digits_prior), y, noise=NOISE, plate=2)
    options = {"moment_samples": 256} if method == "smc" else {}
    post = condgen.condition(model, data, method=method, steps=25, num_samples=100, seed=1,
                             progress=False, **options)  # fmt: skip
    m, _ = post.moments("x")
    assert m.shape == (2, 1, 8, 8) and torch.isfinite(m).all()
    own, other = _rms(m[..., :4, :] - y), _rms(m[..., :4, :] - y.flip(0))
    assert (own < 3 * NOISE).all() and (own < 0.5 * other).all()


def test_gibbs_inpaints_a_held_out_digit_with_an_unknown_noise_scale(digits_prior):
    """s ~ HalfNormal(0.5) unknown beside the diffusers prior: particle Gibbs (2 chains of 20
    warm-up and 30 draws, 8 particles, 10 steps a sweep) on the test 0 observed at s = 0.15.
    The central 95% interval of s covers 0.15 (measured 0.141 to 0.243: the prior cannot fit
    every observed pixel, which leaves residuals a little above the noise), the posterior
    mean's error on the hidden half is below 0.6 times that of the training mean image
    (measured 0.19 against 0.50), and on the observed half it is within 2 noise sd of y
    (measured 0.15)."""
    truth, y, mean = _digits(1)
    model, data = _inpainting(digits_prior, y[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # 60 draws are few for R-hat
        post = condgen.condition(model, data, method="gibbs", num_chains=2, warmup_steps=20,
                                 num_samples=60, num_particles=8, steps=10, seed=0,
                                 progress=False)  # fmt: skip
    s = post.samples["s"].flatten()
    assert s.quantile(0.025) < NOISE < s.quantile(0.975)
    m = post.samples["x"].flatten(0, 1).mean(0)
    hidden = _rms(m[..., 4:, :] - truth[0, :, 4:])
    assert hidden < 0.6 * _rms(mean[..., 4:, :] - truth[0, :, 4:])
    assert _rms(m[..., :4, :] - y[0]) < 2 * NOISE
