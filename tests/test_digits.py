"""The digits tasks: cached prior, models, observation operators, conditioning and plots, on a
tiny prior trained for a few hundred steps."""

import math
import sys

import matplotlib.pyplot as plt
import pytest
import torch

import condgen
from condgen.evaluate import digits
from condgen.evaluate.digits import (
    DigitsDenoising,
    DigitsInpainting,
    digits_cache_path,
    digits_data,
    digits_prior,
    prepare_digits,
)
from condgen.evaluate.tasks import available_tasks, get_task
from condgen.likelihoods import detect_linear_gaussian

pytest.importorskip("sklearn")

TINY_STEPS = 300


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("digits-cache")


@pytest.fixture(scope="module")
def prior(cache):
    path = prepare_digits(cache_dir=cache, steps=TINY_STEPS, progress=False)
    assert path == cache / "digits-prior.pt"
    return digits_prior(cache)


def _tasks(prior):
    return [
        DigitsInpainting("half", prior=prior),
        DigitsInpainting("center", noise=0.2, index=5, prior=prior),
        DigitsDenoising(noise=0.5, index=3, prior=prior),
    ]


def test_data_split_is_fixed_disjoint_and_scaled():
    train, test = digits_data("train"), digits_data("test")
    everything, labels = digits_data("all", labels=True)
    assert train.shape == (1437, 64) and test.shape == (360, 64) and labels.shape == (1797,)
    assert torch.equal(test, everything[::5])
    assert torch.equal(torch.cat([train, test]).sort(0).values, everything.sort(0).values)
    assert train.min() == -1 and train.max() == 1
    assert torch.equal((everything + 1) * 8, ((everything + 1) * 8).round())  # v / 8 - 1
    with pytest.raises(ValueError, match="split"):
        digits_data("validation")


def test_missing_scikit_learn_says_what_to_install(monkeypatch):
    digits.data._load_sklearn_digits.cache_clear()
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    try:
        with pytest.raises(ImportError, match="pip install scikit-learn"):
            digits_data()
    finally:
        digits.data._load_sklearn_digits.cache_clear()


def test_cache_is_written_reloads_identically_and_training_is_reproducible(prior, cache, tmp_path):
    """The cached prior reloads to the same denoiser; the same seed trains the same prior;
    training leaves the global random state alone."""
    x_t = torch.linspace(-1.5, 1.5, 3 * 64).reshape(3, 64)
    t = torch.tensor([0.1, 0.5, 0.9])
    again = digits_prior(cache)
    assert torch.equal(prior.denoise(x_t, t), again.denoise(x_t, t))
    assert prior.event_shape == (64,)

    state = torch.random.get_rng_state()
    prepare_digits(cache_dir=tmp_path, steps=TINY_STEPS, progress=False)
    assert torch.equal(torch.random.get_rng_state(), state)
    retrained = digits_prior(tmp_path)
    assert torch.equal(prior.denoise(x_t, t), retrained.denoise(x_t, t))


def test_missing_cache_names_the_command(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="condgen prepare digits --cache-dir") as error:
        digits_prior(tmp_path / "empty")
    assert str(tmp_path / "empty" / "digits-prior.pt") in str(error.value)
    monkeypatch.setenv("CONDGEN_CACHE", str(tmp_path / "env"))
    assert digits_cache_path() == tmp_path / "env" / "digits-prior.pt"
    with pytest.raises(FileNotFoundError, match="condgen prepare digits"):
        DigitsInpainting()
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "digits-prior.pt").write_text("not a prior")
    with pytest.raises(ValueError, match="condgen prepare digits"):
        digits_prior()


def test_models_trace_with_the_right_sites_and_operator(prior):
    for task, observed in zip(_tasks(prior), [32, 48, 64], strict=True):
        problem = condgen.Problem(task.model, task.data)
        assert list(problem.latent_sites) == ["x"] and list(problem.observed_sites) == ["y"]
        assert problem.latent_sites["x"].shape == (64,) and problem.latent_sites["x"].neural
        assert problem.observed_sites["y"].shape == (observed,)
        linear, site = detect_linear_gaussian(problem, "x", "test")
        assert site == "y"
        torch.testing.assert_close(linear.A, task.operator)
        torch.testing.assert_close(linear.sigma, torch.full((observed,), task.noise))
        assert problem.log_likelihood({"x": torch.zeros(5, 64)}).shape == (5,)
        assert task.exact is False and task.default_methods == ("tds", "dps", "pigdm")


def test_masks():
    half = digits.tasks._as_mask("half")
    assert half.sum() == 32 and half[:32].all()
    center = digits.tasks._as_mask("center").reshape(8, 8)
    assert center.sum() == 48 and not center[2:6, 2:6].any()
    custom = torch.zeros(8, 8, dtype=torch.bool)
    custom[0, :3] = True
    assert torch.equal(digits.tasks._as_mask(custom).nonzero().flatten(), torch.arange(3))
    assert torch.equal(digits.tasks._as_mask(custom.float().flatten()), custom.flatten())
    for bad, message in [("corner", "unknown mask"), (torch.zeros(64), "no pixel")]:
        with pytest.raises(ValueError, match=message):
            digits.tasks._as_mask(bad)
    with pytest.raises(ValueError, match="shaped"):
        digits.tasks._as_mask(torch.ones(7, 7, dtype=torch.bool))


@pytest.mark.parametrize("noise", [0.1, 0.3])
def test_inpainting_observes_the_masked_truth_plus_noise(prior, noise):
    """Over 50 seeds (2400 residuals), the residual y - A x* has mean 0 and sd equal to the
    noise, within four Monte Carlo standard errors."""
    residuals = []
    for seed in range(50):
        task = DigitsInpainting("center", noise=noise, index=7, prior=prior, seed=seed)
        torch.testing.assert_close(task.true_image, digits_data("test")[7])
        torch.testing.assert_close(task.operator @ task.true_image, task.true_image[task.pixels])
        residuals.append(task.data["y"] - task.operator @ task.true_image)
        image = task.observation_image().flatten()
        assert torch.equal(image.isnan(), ~task.observed)
    residuals = torch.cat(residuals)
    n = len(residuals)
    assert abs(float(residuals.mean())) < 4 * noise / math.sqrt(n)
    assert abs(float(residuals.std()) / noise - 1) < 4 / math.sqrt(2 * n)


@pytest.mark.parametrize(
    "method, options", [("dps", {"steps": 20}), ("tds", {"steps": 20}), ("pigdm", {"steps": 20})]
)
def test_short_conditioning_runs(prior, method, options):
    task = DigitsInpainting("half", prior=prior)
    post = condgen.condition(
        task.model, task.data, method=method, num_samples=32, seed=0, progress=False, **options
    )
    x = post.flatten()["x"]
    assert x.shape == (32, 64) and torch.isfinite(x).all()


def test_reference_samples_pool_runs_and_are_remembered(prior):
    task = DigitsDenoising(prior=prior)
    state = torch.random.get_rng_state()
    settings = {"runs": 2, "particles": 40, "steps": 10}
    draws = task.reference_samples(50, seed=3, **settings)["x"]
    assert draws.shape == (50, 64) and torch.isfinite(draws).all()
    assert torch.equal(torch.random.get_rng_state(), state)
    stats = task.reference_stats
    assert stats["runs"] == 2 and len(stats["run_ess"]) == 2 and 1 <= stats["ess"] <= 80
    assert torch.equal(task.reference_samples(50, seed=3, **settings)["x"], draws)
    fresh = DigitsDenoising(prior=prior).reference_samples(50, seed=3, **settings)["x"]
    torch.testing.assert_close(fresh, draws)


def test_registered_and_built_by_name(prior):
    tasks = available_tasks()
    assert "digits-inpainting" in tasks and "digits-denoising" in tasks
    task = get_task("digits-inpainting", mask="center", prior=prior)
    assert isinstance(task, DigitsInpainting) and len(task.data["y"]) == 48
    assert isinstance(get_task("digits-denoising", prior=prior), DigitsDenoising)


def test_plot_shows_truth_observation_and_draws(prior):
    task = DigitsInpainting("half", prior=prior)
    posteriors = {
        name: condgen.condition(
            task.model, task.data, method=name, num_samples=6, seed=0, progress=False, steps=5
        )
        for name in ("dps", "tds")
    }
    fig = task.plot(posteriors, num=4, reference=torch.zeros(3, 64))
    assert isinstance(fig, plt.Figure)
    assert len(fig.axes) == 4 * 5  # (truth row, reference, two methods) x (mean + 4 draws)
    plt.close(fig)
