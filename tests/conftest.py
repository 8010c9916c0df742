"""Shared test settings."""

import os
from types import SimpleNamespace

import matplotlib
import pyro
import pyro.distributions as dist
import pytest
import torch

from condgen.evaluate import GaussianMixtureInverseProblem
from condgen.priors import GaussianMixturePrior

matplotlib.use("Agg")

# pytest-xdist runs one worker per core: one torch thread each avoids oversubscription, which
# otherwise slows small-tensor code (Pyro's SVI and NUTS) several-fold.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    """Starts the longest tests first (the tutorials, then those marked slow), so that on the
    xdist workers the short tests fill in beside them instead of one long test running alone
    at the end."""
    items.sort(
        key=lambda item: ("test_tutorials.py" not in item.nodeid, "slow" not in item.keywords)
    )


@pytest.fixture
def gaussian_problem() -> SimpleNamespace:
    """A Gaussian prior N(mu, C) on R^4 (a one-component mixture, so path samplers see its
    exact denoiser) observed through a random 2 x 4 operator with noise 0.3: its posterior and
    evidence are Gaussian in closed form. Fields: model, data, log_evidence, prior, A, noise,
    C, mu, y."""
    torch.manual_seed(0)
    d = 4
    L = torch.randn(d, d)
    C = L @ L.T / d + 0.5 * torch.eye(d)
    mu = torch.randn(d)
    prior = GaussianMixturePrior(torch.ones(1), mu[None], C[None])
    A, noise = torch.randn(2, d), 0.3
    y = A @ prior.sample() + noise * torch.randn(2)

    def model():
        x = pyro.sample("x", prior)
        pyro.sample("y", dist.Normal(x @ A.T, noise).to_event(1))

    evidence = dist.MultivariateNormal(A @ mu, A @ C @ A.T + noise**2 * torch.eye(2))
    return SimpleNamespace(
        model=model, data={"y": y}, log_evidence=float(evidence.log_prob(y)), prior=prior,
        A=A, noise=noise, C=C, mu=mu, y=y,
    )  # fmt: skip


def _mode_total_variation(posterior: GaussianMixturePrior, draws) -> float:
    """The total variation between the exact posterior's mode weights and the mode masses of
    weighted draws (a condgen Posterior; each draw split over the modes by its
    responsibilities)."""
    x, log_weights = draws.samples["x"].flatten(0, 1), draws.log_weights.flatten()
    components = torch.distributions.MultivariateNormal(posterior.means, posterior.covs)
    r = (components.log_prob(x[:, None]) + posterior.weights.log()).softmax(-1)
    masses = log_weights.softmax(0) @ r
    return float(0.5 * (masses - posterior.weights).abs().sum())


@pytest.fixture
def mode_tv():
    """:func:`_mode_total_variation`, for tests of samplers' mode masses."""
    return _mode_total_variation


@pytest.fixture
def three_mode_task():
    """A three-mode prior in d = 2 (weights 0.5, 0.3, 0.2, modes 3 apart, variance 0.3) seen
    through one noisy projection (noise 1), which leaves two modes of nearly equal posterior
    mass (0.535, 0.465)."""
    means = torch.tensor([[-3.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    covs = 0.3 * torch.eye(2).expand(3, 2, 2)
    prior = GaussianMixturePrior(torch.tensor([0.5, 0.3, 0.2]), means, covs)
    operator = torch.tensor([[0.6, 0.8]])
    return GaussianMixtureInverseProblem(prior=prior, operator=operator, noise=1.0, seed=0)


@pytest.fixture(scope="session")
def binary_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits binarised at intensity 8 (1797 images of 64 pixels), shuffled
    with seed 0 and split into 1500 training and 297 held-out images, for the VAE tests."""
    datasets = pytest.importorskip("sklearn.datasets")
    images = torch.as_tensor(datasets.load_digits().data, dtype=torch.float32)
    images = (images > 7).float()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    return images[order[:1500]], images[order[1500:]]


@pytest.fixture
def digits_vae(binary_digits) -> SimpleNamespace:
    """The VAE of the digits tests, built after clearing Pyro's parameters and seeding with 0:
    latent z ~ N(0, I_4), pixels x ~ Bernoulli(logits = decoder(z)) with a 4-64-64 (tanh)
    decoder, in a data plate that subsamples ``batch_size`` images. Fields: train, test (from
    binary_digits), latent (4), decoder, model(x, batch_size=None)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    latent = 4
    decoder = torch.nn.Sequential(
        torch.nn.Linear(latent, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64)
    )

    def model(x, batch_size=None):
        pyro.module("decoder", decoder)
        with pyro.plate("data", len(x), subsample_size=batch_size) as ind:
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([latent]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x[ind])

    train, test = binary_digits
    return SimpleNamespace(train=train, test=test, latent=latent, decoder=decoder, model=model)


def _two_moons_scores(estimator, method: str) -> list[float]:
    r"""C2ST of a trained two-moons estimator's draws (1000, through ``condition``) against
    exact posterior draws (1000) at the standard observation (0, 0) and two simulated ones;
    asserts that every draw lies in the prior's support."""
    from condgen import condition
    from condgen.evaluate import TwoMoons, c2st

    scores = []
    tasks = [TwoMoons()] + [TwoMoons(seed=k, observation="simulated") for k in (4, 6)]
    for i, task in enumerate(tasks):
        reference = task.reference_samples(1000, seed=100 + i)["theta"]
        post = condition(
            task.model, task.data, method=method, estimator=estimator, num_samples=1000,
            seed=i, progress=False,
        )  # fmt: skip
        draws = post.samples["theta"][0]
        assert ((draws > -1) & (draws < 1)).all()  # no leakage out of the prior's support
        scores.append(float(c2st(draws, reference)))
    return scores


@pytest.fixture
def two_moons_scores():
    r"""The C2ST scores of a two-moons estimator on three observations (see
    :func:`_two_moons_scores`)."""
    return _two_moons_scores
