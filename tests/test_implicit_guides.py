r"""Tests of the semi-implicit and implicit guides and their objectives.

Exact references: the two-mode posterior's :math:`\theta_1` is drawn by inverse CDF of its
1-D marginal on a fine grid (200,001 points) and :math:`\theta_2` from its conjugate normal
(independent); the banana and X-shaped targets are drawn from their 2-D densities on a
1201 x 1201 grid (a cell is drawn, then a uniform point in it). Distances are sliced
Wasserstein (SW2) between 2000 guide draws and 2000 exact draws.

Figures measured on one CPU thread are in each test's docstring.
"""

from __future__ import annotations

import copy
import math
import time

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from torch import Tensor, nn

import condgen
from condgen.evaluate import TargetDensity, TwoModes, sliced_wasserstein
from condgen.guides import (
    AmortizedImplicitGuide,
    AmortizedSemiImplicitGuide,
    ImplicitGuide,
    SemiImplicitGuide,
    SemiImplicitLatent,
)
from condgen.infer import SIVI_ELBO, AdversarialELBO, KernelSIVI
from condgen.problem import Problem

torch.set_num_threads(1)

NUM_DRAWS = 2000


# ------------------------------------------------------------------------------- targets


def two_mode(y=None):
    r"""``theta ~ N(0, 9 I_2)``, ``y ~ N((theta_1^2, theta_2), 0.5^2 I)``: at ``y = (4, 0)``
    the posterior has two modes, ``theta_1 = +-2`` (the task ``TwoModes``, with ``y`` as an
    argument)."""
    theta = pyro.sample("theta", dist.Normal(0.0, 3.0).expand([2]).to_event(1))
    loc = torch.stack([theta[..., 0] ** 2, theta[..., 1]], -1)
    pyro.sample("y", dist.Normal(loc, 0.5).to_event(1), obs=y)


TWO_MODE_Y = torch.tensor([4.0, 0.0])
TARGETS = {"banana": TargetDensity.banana(), "x_shaped": TargetDensity.x_shaped()}


def two_mode_exact(n: int, seed: int) -> Tensor:
    return TwoModes(TWO_MODE_Y.tolist()).reference_samples(n, seed)["theta"]


def _draws(post: condgen.Posterior) -> Tensor:
    return post.samples["theta"].reshape(-1, 2)


# ------------------------------------------------------------- semi-implicit vs AutoNormal


def _condition(model, data, guide, seed=0, **options):
    start = time.perf_counter()
    post = condgen.condition(
        model,
        data,
        method="svi",
        guide=guide,
        num_samples=NUM_DRAWS,
        seed=seed,
        progress=False,
        **options,
    )
    post.stats["wall_s"] = time.perf_counter() - start
    return post


@pytest.fixture(scope="module")
def two_mode_runs():
    r"""``condition(..., method="svi", guide=...)`` with the SVI defaults (2000 steps, lr 0.02
    decaying to 5%), seed 0."""
    data = {"y": TWO_MODE_Y}
    runs = {guide: _condition(two_mode, data, guide) for guide in ("semi_implicit", "normal")}
    return runs, two_mode_exact(NUM_DRAWS, seed=1)


def test_two_mode_masses_and_distance(two_mode_runs):
    r"""The semi-implicit guide (SIVI_ELBO, its default) finds both modes of the two-mode
    posterior; AutoNormal finds one.

    Measured on one thread, SVI defaults, seeds 0-5: mass at :math:`\theta_1 > 0` 0.49-0.51
    and SW 0.09-0.27 (about 6 s each); AutoNormal: mass 0 or 1, SW 1.81-1.82 (3 s). Two sets
    of 2000 exact draws are 0.31 apart (the mode masses fluctuate by about 1%, moved over a
    distance of 4). Bounds: each mode's mass in [0.35, 0.65] (the issue's), SW below 0.3 times
    AutoNormal's (measured ratios at most 0.15).
    """
    runs, reference = two_mode_runs
    semi = _draws(runs["semi_implicit"])
    mass = float((semi[:, 0] > 0).float().mean())
    distance = {k: float(sliced_wasserstein(_draws(p), reference)) for k, p in runs.items()}
    print(f"two-mode: mass {mass:.3f}, SW {distance}")
    assert 0.35 <= mass <= 0.65
    assert ((semi[:, 0].abs() - 2).abs() < 0.5).float().mean() > 0.95  # near the modes
    assert distance["semi_implicit"] < 0.3 * distance["normal"]


def test_condition_semi_implicit_posterior_and_arviz(two_mode_runs):
    post = two_mode_runs[0]["semi_implicit"]
    assert post.samples["theta"].shape == (1, NUM_DRAWS, 2)
    assert torch.isfinite(post.samples["theta"]).all()
    assert len(post.stats["elbo"]) == 2000
    assert sum(post.stats["elbo"][-50:]) > sum(post.stats["elbo"][:50])
    idata = post.to_arviz()
    assert idata.posterior.sizes["draw"] == NUM_DRAWS
    assert "y" in idata.log_likelihood


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_banana_and_x_shaped_beat_normal(name):
    r"""Banana and X-shaped targets (prior ``N(0, 9 I)`` times the target density, a
    ``pyro.factor``), SVI defaults, seed 0.

    Measured on one thread, seeds 0-2: banana SW 0.11-0.14 (semi-implicit, 6 s) against
    0.34-0.37 (AutoNormal, 3 s); X-shaped 0.11-0.15 against 0.38-0.40; floors (two sets of 2000
    exact draws) 0.06 and 0.08. Bound: below 0.6 times AutoNormal's (measured ratios at most
    0.41).
    """
    task = TARGETS[name]
    reference = task.reference_samples(NUM_DRAWS, seed=1)["theta"]
    distance = {
        guide: float(sliced_wasserstein(_draws(_condition(task.model, {}, guide)), reference))
        for guide in ("semi_implicit", "normal")
    }
    print(f"{name}: SW {distance}")
    assert distance["semi_implicit"] < 0.6 * distance["normal"]


# ------------------------------------------------------------------ guides as Pyro guides


def gamma_poisson(counts):
    r"""``rate ~ Gamma(2, 1)``, ``counts_i ~ Poisson(rate)``: a positive latent."""
    rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
    with pyro.plate("data", len(counts)):
        pyro.sample("counts", dist.Poisson(rate), obs=counts)


COUNTS = torch.tensor([3.0, 5.0, 2.0, 4.0, 6.0])


@pytest.mark.parametrize("kind", ["semi_implicit", "implicit"])
def test_predictive_sample_guide_and_support(kind):
    guide = (SemiImplicitGuide if kind == "semi_implicit" else ImplicitGuide)(gamma_poisson)
    for parallel in (False, True):
        draws = Predictive(gamma_poisson, guide=guide, num_samples=50, parallel=parallel)(COUNTS)
        assert draws["rate"].shape == (50, 1)  # as with AutoNormal: the plate dimension
        assert (draws["rate"] > 0).all()
        assert draws["counts"].shape == (50, 5)
    problem = Problem(gamma_poisson, args=(COUNTS,))
    values, log_q = problem.sample_guide(guide, 64)
    assert values["rate"].shape == (64,) and (values["rate"] > 0).all()
    if kind == "semi_implicit":  # a Monte Carlo estimate, with the Jacobian of exp
        assert torch.isfinite(log_q).all()
    else:  # "unknown"
        assert torch.isnan(log_q).all()


def test_semi_implicit_log_prob_and_state_dict():
    r"""With a constant mixing (last layer zeroed), the guide is a Gaussian and the estimate is
    exact; a saved and loaded guide, and a copy, draw the same values."""
    torch.manual_seed(0)
    guide = SemiImplicitGuide(gamma_poisson, hidden=(8,))
    guide(COUNTS)
    with torch.no_grad():
        guide.mixing.net[-1].weight.zero_()
    q = guide.get_posterior()
    assert isinstance(q, SemiImplicitLatent)
    u = q.rsample((7,))
    loc, scale = q.draw(torch.Size([1]))
    exact = dist.Normal(loc[0], scale[0]).log_prob(u).sum(-1)
    assert torch.allclose(q.log_prob(u, num_inner=3), exact, atol=1e-5)
    assert torch.allclose(q.log_prob(u.clone()), exact, atol=1e-5)  # not its own draw
    state = guide.state_dict()
    loaded = SemiImplicitGuide(gamma_poisson, hidden=(8,))
    loaded(COUNTS)
    loaded.load_state_dict(state)
    pyro.set_rng_seed(1)
    expected = guide(COUNTS)["rate"]
    pyro.set_rng_seed(1)
    assert torch.equal(loaded(COUNTS)["rate"], expected)
    pyro.set_rng_seed(1)
    assert torch.equal(copy.deepcopy(guide)(COUNTS)["rate"], expected)


def test_sivi_density_estimate_bias_shrinks_with_inner_draws():
    r"""The documented bias of SIVI_ELBO: at the guide's own draws, the estimate
    :math:`\log \hat q_K` is too high on average, less so as :math:`K` grows (so the bound
    rises with :math:`K`). For the untrained guide of the two-mode model, the mean over 50,000
    draws was -3.04, -3.22 and -3.27 for K = 1, 10 and 1000 (standard error about 0.01; in
    another run K = 100 and 1000 both gave -3.27). Bounds: K = 1 above K = 10 by 0.1, K = 10
    above K = 1000 by 0.02."""
    pyro.set_rng_seed(0)
    guide = SemiImplicitGuide(two_mode, hidden=(16,))
    guide(TWO_MODE_Y)
    q = guide.get_posterior()

    def mean_estimate(num_inner: int) -> float:
        with torch.no_grad():
            chunks = [q.log_prob(q.rsample((5000,)), num_inner=num_inner) for _ in range(10)]
        return float(torch.cat(chunks).mean())

    estimates = [mean_estimate(k) for k in (1, 10, 1000)]
    print(f"mean log q_K at K = 1, 10, 1000: {estimates}")
    assert estimates[0] > estimates[1] + 0.1
    assert estimates[1] > estimates[2] + 0.02


@pytest.mark.parametrize("loss", ["sivi", "kernel"])
def test_objectives_match_conjugate_posterior(loss):
    r"""Gamma-Poisson: the posterior is ``Gamma(2 + 20, 1 + 5)`` (mean 3.667, sd 0.782); the
    guide works in the log space of the rate, so the objectives need the Jacobian of exp.

    Measured (one thread, seed 0): SIVI_ELBO (lr 0.01, 500 steps, 4 s) mean 3.598, sd 0.747;
    KernelSIVI (64 particles, lr 0.003, 2000 steps, 8 s) mean 3.556, sd 0.947 (1000 steps:
    3.457 and 0.975; at lr 0.01 it diverged: the KSD with a Gaussian kernel sees little of a
    guide drifting into the tails, and converges slowly in the scale). Bounds: mean within
    0.2 (Monte Carlo error of 4000 draws: 0.012); sd within 10% for SIVI_ELBO, 30% for
    KernelSIVI.
    """
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = SemiImplicitGuide(gamma_poisson, hidden=(32, 32))
    if loss == "sivi":
        objective, lr, steps = SIVI_ELBO(), 0.01, 500
    else:
        objective, lr, steps = KernelSIVI(num_particles=64), 0.003, 2000
    optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": 0.1 ** (1 / steps)})
    svi = SVI(gamma_poisson, guide, optim, objective)
    for _ in range(steps):
        svi.step(COUNTS)
    with torch.no_grad():
        rate = Predictive(gamma_poisson, guide=guide, num_samples=4000)(COUNTS)["rate"]
    exact = dist.Gamma(22.0, 6.0)
    print(f"{loss}: mean {rate.mean():.3f} sd {rate.std():.3f}")
    assert abs(rate.mean() - exact.mean) < 0.2
    assert abs(rate.std() / exact.stddev - 1) < (0.1 if loss == "sivi" else 0.3)


# ------------------------------------------------------------------ implicit guide and AVB


def test_implicit_guide_trains_without_nans_on_two_mode():
    r"""``guide="implicit"`` (AdversarialELBO, 64 particles, SVI defaults): finite losses and
    draws. Measured: 7 s; the generator took one mode (the adversarial ELBO is mode-seeking)."""
    post = _condition(two_mode, {"y": TWO_MODE_Y}, "implicit")
    assert all(math.isfinite(v) for v in post.stats["elbo"])
    assert torch.isfinite(post.samples["theta"]).all()


def correlated(y=None):
    r"""``theta ~ N(0, I_2)``, ``y ~ N(theta_1 + theta_2, 0.5^2)``: a correlated Gaussian
    posterior, whose correlation a diagonal contrast misses."""
    theta = pyro.sample("theta", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    pyro.sample("y", dist.Normal(theta[..., 0] + theta[..., 1], 0.5), obs=y)


def test_discriminator_log_ratio_rank_correlation():
    r"""With an affine generator :math:`u = W \epsilon + b`, the guide is
    :math:`\mathcal{N}(b, W W^\top)`: the exact :math:`\log q(u) - \log p(u)` is known at
    any step. After 2000 steps (256 particles, discriminator and guide lr 1e-3), its Spearman
    rank correlation with the discriminator's estimate over 1000 guide draws was 0.968 (one
    thread, 7 s; with 64 particles 0.767, with 64 particles and discriminator lr 3e-3 0.681:
    the estimate needs a large batch). The fitted covariance was within 0.02 of the exact
    posterior's. Bound: 0.9 (the issue's).
    """
    scipy_stats = pytest.importorskip("scipy.stats")
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    y = torch.tensor(1.0)
    generator = nn.Linear(2, 2)
    guide = ImplicitGuide(correlated, generator=generator, noise_dim=2)
    loss = AdversarialELBO(lr=1e-3, num_particles=256)
    svi = SVI(correlated, guide, pyro.optim.Adam({"lr": 1e-3}), loss)
    for _ in range(2000):
        svi.step(y)
    with torch.no_grad():
        u = generator(torch.randn(1000, 2))
        covariance = generator.weight @ generator.weight.T
        q = dist.MultivariateNormal(generator.bias, covariance_matrix=covariance)
        exact = q.log_prob(u) - dist.Normal(0.0, 1.0).log_prob(u).sum(-1)
        estimate = loss.log_ratio(correlated, guide, u, y)
    rho = scipy_stats.spearmanr(exact.numpy(), estimate.numpy()).statistic
    posterior = torch.tensor([[5.0, -4.0], [-4.0, 5.0]]) / 9
    print(f"rank correlation {rho:.3f}, covariance {covariance.tolist()}")
    assert rho > 0.9
    assert (covariance - posterior).abs().max() < 0.1


def test_trace_elbo_refuses_implicit_guide():
    guide = ImplicitGuide(correlated)
    svi = SVI(correlated, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    with pytest.raises(NotImplementedError, match="AdversarialELBO"):
        svi.step(torch.tensor(1.0))


# -------------------------------------------------------------------------------- digits


def test_semi_implicit_vae_on_digits(digits_vae):
    r"""An amortized semi-implicit VAE (``AmortizedSemiImplicitGuide(model, encoder)``) on
    scikit-learn's binarised digits (1500 train, 297 held out), latent dimension 4, decoder
    4-64-64 (tanh), encoder 64-64-16 (the context), mixing network hidden (32, 32),
    minibatches of 100 by plate subsampling, SIVI_ELBO (1 particle, 50 inner draws),
    ClippedAdam (lr 0.01 decaying to 0.001), 1000 steps.

    Held-out importance-sampled log-likelihood per image, 32 guide draws per image, with the
    guide's density estimated from 256 inner draws (consistent; for a finite number the
    estimate of :math:`\log p(x)` is slightly low): measured -18.9 nats in 6.6 s (one
    thread), -45.2 at initialisation. For comparison, the held-out ELBO of the
    ``AmortizedNormal`` VAE of test_guides.py after the same steps is -19.2. Bound: -20.5.
    """
    train, test, model, decoder = (
        digits_vae.train,
        digits_vae.test,
        digits_vae.model,
        digits_vae.decoder,
    )
    encoder = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 16))
    guide = AmortizedSemiImplicitGuide(
        model, encoder, noise_dim=digits_vae.latent, hidden=(32, 32)
    )

    def held_out(num_draws: int = 32, num_inner: int = 256) -> float:
        with torch.no_grad():
            q = guide._local_posterior(test)
            z = q.rsample((num_draws,))
            log_q = q.log_prob(z, num_inner=num_inner)
            log_p = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
            log_p = log_p + dist.Bernoulli(logits=decoder(z)).log_prob(test).sum(-1)
            return float((torch.logsumexp(log_p - log_q, 0) - math.log(num_draws)).mean())

    guide(train, batch_size=100)
    initial = held_out()
    steps = 1000
    optim = pyro.optim.ClippedAdam({"lr": 0.01, "lrd": 0.1 ** (1 / steps)})
    svi = SVI(model, guide, optim, SIVI_ELBO(num_particles=1))
    start = time.perf_counter()
    for _ in range(steps):
        svi.step(train, batch_size=100)
    seconds = time.perf_counter() - start
    final = held_out()
    print(f"semi-implicit VAE: held-out log-lik {initial:.1f} -> {final:.1f}, {seconds:.1f} s")
    assert initial < -30
    assert final > -20.5


def hierarchical_model():
    r"""A global ``mu`` beside local ``z_i``: ``mu ~ N(0, 5^2)``, ``z_i ~ N(mu, 1)``,
    ``x_i ~ N(z_i, 0.5^2)``, 40 data."""
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    with pyro.plate("data", 40):
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z, 0.5))


def test_amortized_semi_implicit_with_global_latent_in_condition():
    r"""A global latent (an AutoNormal part) beside local ones, through ``condition``.
    ``mu | x`` has mean 0.9988 mean(x) and sd 0.177; bound on the mean error 0.15."""
    torch.manual_seed(0)
    x = 2.0 + 1.2 * torch.randn(40)
    encoder = nn.Sequential(nn.Unflatten(-1, (-1, 1)), nn.Linear(1, 4))  # [B] -> [B, 4]
    guide = AmortizedSemiImplicitGuide(hierarchical_model, encoder, hidden=(16,), data={"x": x})
    post = condgen.condition(
        hierarchical_model,
        {"x": x},
        method="svi",
        guide=guide,
        num_steps=500,
        num_samples=500,
        seed=0,
        progress=False,
    )
    assert post.samples["z"].shape == (1, 500, 40)
    assert abs(post.samples["mu"].mean() - x.mean()) < 0.15


def test_amortized_implicit_guide_in_condition():
    r"""``AmortizedImplicitGuide(model, encoder)``: an amortized generator of the local
    ``z_i`` beside an AutoNormal ``mu``, trained by AdversarialELBO (16 particles, so 16 draws
    per datum for its per-datum contrast), 300 steps through ``condition``. Exact: ``mu | x``
    has mean 0.9988 mean(x) (1.901) and sd 0.177; ``z_i | mu, x_i`` has mean (mu + 4 x_i) / 5
    and sd 0.447. Measured (one thread, 6 s): mu mean 1.893, sd 0.158; z sd 0.456 on average, its
    mean at most 0.08 off. Bounds: 0.15 on the means, z sd in [0.35, 0.6]."""
    torch.manual_seed(0)
    x = 2.0 + 1.2 * torch.randn(40)
    encoder = nn.Sequential(nn.Unflatten(-1, (-1, 1)), nn.Linear(1, 4))
    guide = AmortizedImplicitGuide(hierarchical_model, encoder, hidden=(16,), data={"x": x})
    post = condgen.condition(
        hierarchical_model,
        {"x": x},
        method="svi",
        guide=guide,
        loss=AdversarialELBO(num_particles=16),
        num_steps=300,
        num_samples=500,
        seed=0,
        progress=False,
    )
    mu, z = post.samples["mu"][0], post.samples["z"][0]
    assert abs(mu.mean() - 0.9988 * x.mean()) < 0.15
    assert (z.mean(0) - (mu.mean() + 4 * x) / 5).abs().max() < 0.15
    assert 0.35 < z.std(0).mean() < 0.6


# -------------------------------------------------------------------------------- errors


def test_bad_arguments_name_themselves():
    for kwargs, name in [
        ({"noise_dim": 0}, "noise_dim"),
        ({"hidden": (0,)}, "hidden"),
        ({"init_scale": -1.0}, "init_scale"),
        ({"components": 3}, "components"),
        ({"num_inner": 0}, "num_inner"),
    ]:
        with pytest.raises(ValueError, match=name):
            SemiImplicitGuide(correlated, **kwargs)
    with pytest.raises(ValueError, match="noise_dim is required"):
        ImplicitGuide(correlated, generator=nn.Linear(2, 2))
    with pytest.raises(ValueError, match="noise_dim"):
        ImplicitGuide(correlated, noise_dim=1)(torch.tensor(1.0))  # below the latent dimension
    for make, name in [
        (lambda: SIVI_ELBO(num_inner=0), "num_inner"),
        (lambda: SIVI_ELBO(num_particles=0), "num_particles"),
        (lambda: KernelSIVI(num_particles=1), "num_particles"),
        (lambda: KernelSIVI(bandwidth=-1.0), "bandwidth"),
        (lambda: AdversarialELBO(lr=0.0), "lr"),
        (lambda: AdversarialELBO(discriminator="mlp"), "discriminator"),
        (lambda: AdversarialELBO(discriminator_steps=0), "discriminator_steps"),
        (lambda: condgen.methods.SVI(loss="sivi"), "loss"),
    ]:
        with pytest.raises(ValueError, match=name):
            make()
    y = torch.tensor(1.0)
    with pytest.raises(ValueError, match="SemiImplicitLatent"):
        SIVI_ELBO().loss(correlated, AutoNormal(correlated), y)
    with pytest.raises(ValueError, match="trained discriminator"):
        AdversarialELBO().log_ratio(correlated, ImplicitGuide(correlated), torch.zeros(3, 2), y)


@pytest.mark.parametrize(
    "guide, amortized",
    [(SemiImplicitGuide, AmortizedSemiImplicitGuide), (ImplicitGuide, AmortizedImplicitGuide)],
)
def test_global_guides_name_their_amortized_form(guide, amortized):
    """A guide of all latent sites given an encoder names the amortized class to use, and the
    amortized class, given the same model and encoder, is the guide of the local latents."""
    encoder = nn.Sequential(nn.Unflatten(-1, (-1, 1)), nn.Linear(1, 4))
    x = torch.randn(40)
    with pytest.raises(ValueError, match=f"use condgen.guides.{amortized.__name__}"):
        guide(hierarchical_model, encoder=encoder, data={"x": x})
    local = amortized(hierarchical_model, encoder, data={"x": x})
    assert type(local) is amortized
    assert local()["z"].shape == (40,)


def test_importance_refuses_implicit_guide():
    with pytest.raises(ValueError, match="no density"):
        condgen.condition(
            correlated,
            {"y": torch.tensor(1.0)},
            method="importance",
            guide="implicit",
            num_steps=2,
            num_samples=10,
            progress=False,
        )


def test_non_finite_loss_raises():
    def broken(y=None):
        theta = pyro.sample("theta", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        pyro.factor("nan", theta.sum(-1) * math.nan)

    for loss in (SIVI_ELBO(), KernelSIVI(num_particles=8)):
        with pyro.validation_enabled(False), pytest.raises(FloatingPointError, match="learning"):
            loss.loss_and_grads(broken, SemiImplicitGuide(broken))


def test_svi_method_reports_the_objective_it_ran():
    """condition(method="svi") records the ELBO for the guide's default objective, the kernel
    Stein discrepancy for KernelSIVI, and counts the objective's own particles."""

    def model(y=None):
        theta = pyro.sample("theta", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        pyro.sample("y", dist.Normal(theta, 1.0).to_event(1), obs=y)

    data = {"y": torch.tensor([0.5, -0.5])}
    runs = {
        "elbo": {},
        "ksd": {"loss": KernelSIVI(num_particles=8)},
    }
    for key, options in runs.items():
        post = condgen.condition(
            model,
            data,
            method="svi",
            guide="semi_implicit",
            num_steps=5,
            num_samples=20,
            progress=False,
            seed=0,
            **options,
        )
        assert len(post.stats[key]) == 5 and all(map(math.isfinite, post.stats[key]))
        assert post.stats["nfe"] == 5 * (8 if key == "ksd" else SIVI_ELBO().num_particles)
        assert "posterior" in post.to_arviz().groups()
