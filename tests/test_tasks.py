"""Tasks against independent closed forms: the conjugate and mixture posteriors, the two-moons
density (change of variables, simulator draws) and exact sampler (a quadrature of prior times
likelihood), and the task registry.

Monte Carlo tolerances are 4.5 standard errors estimated from the draws (fixed seeds); the
quadratures' own errors are orders of magnitude below them (stated where they are made)."""

import math

import pyro
import pytest
import torch

import condgen
from condgen.evaluate import (
    BayesianLinearRegression,
    BetaBinomial,
    GaussianLinear,
    GaussianMixtureInverseProblem,
    NormalNormal,
    Task,
    TwoMoons,
    TwoMoonsLikelihood,
    available_tasks,
    get_task,
    register_task,
)
from condgen.evaluate import tasks as tasks_module

Z = 4.5  # standard errors allowed per Monte Carlo check


def _within(estimate, truth, standard_error):
    estimate, truth = torch.as_tensor(estimate).double(), torch.as_tensor(truth).double()
    return bool(((estimate - truth).abs() <= Z * torch.as_tensor(standard_error)).all())


# ----------------------------------------------------------------------- closed-form tasks


def test_gaussian_linear_posterior_is_the_conjugate_one():
    """Conditioning the joint Gaussian of (theta, x) = (s z, s z + sigma e): E[theta | x] =
    s^2 / (s^2 + sigma^2) x and Var = s^2 - s^4 / (s^2 + sigma^2); the reference draws have
    these moments within their Monte Carlo error."""
    s, sigma, n = 0.3, 0.2, 20_000
    task = GaussianLinear(dim=6, prior_scale=s, noise=sigma, seed=3)
    x = task.data["x"].double()
    mean, var = s**2 / (s**2 + sigma**2) * x, s**2 - s**4 / (s**2 + sigma**2)
    posterior = task.posterior()["theta"]
    torch.testing.assert_close(posterior.mean.double(), mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(
        posterior.variance.double(), torch.full_like(x, var), rtol=1e-6, atol=0
    )
    draws = task.reference_samples(n, seed=1)["theta"].double()
    assert draws.shape == (n, 6)
    assert _within(draws.mean(0), mean, math.sqrt(var / n))
    assert _within(draws.var(0), var, math.sqrt(2 / (n - 1)) * var)
    defaults = GaussianLinear()  # the benchmark's: d = 10, s = sigma = 0.1
    assert defaults.data["x"].shape == (10,) and defaults.prior_scale == defaults.noise == 0.1


CLOSED_FORM = {
    "normal-normal": NormalNormal,
    "beta-binomial": BetaBinomial,
    "linear-regression": BayesianLinearRegression,
    "gaussian-linear": GaussianLinear,
    "gmm-circle": GaussianMixtureInverseProblem.circle,
    "gmm": lambda: GaussianMixtureInverseProblem(dim=8, obs_dim=2, seed=1),
}


@pytest.mark.parametrize("name", CLOSED_FORM)
def test_model_and_posterior_agree(name):
    """log p(z, y) from the model minus log p(z | y) from posterior() is log p(y), the same
    for every z: the model and its stated posterior describe one joint distribution."""
    task = CLOSED_FORM[name]()
    values = task.reference_samples(64, seed=2)
    posterior = task.posterior()
    difference = task.log_joint(values).double() - sum(
        posterior[site].log_prob(value).double() for site, value in values.items()
    )
    assert torch.isfinite(difference).all()
    assert float(difference.max() - difference.min()) < 1e-3 * (1 + difference.abs().max())
    if name == "gaussian-linear":  # the evidence in closed form: x ~ N(0, (s^2 + sigma^2) I)
        scale = math.sqrt(task.prior_scale**2 + task.noise**2)
        evidence = torch.distributions.Normal(0.0, scale).log_prob(task.data["x"]).sum()
        torch.testing.assert_close(difference, evidence.double().expand(64), rtol=1e-5, atol=1e-4)


# --------------------------------------------------------------- Gaussian-mixture problems


def _posterior_by_gain(prior, A, noise, y):
    """The posterior mixture in the Kalman-gain form (not the precision form of the task):
    S = A C A^T + sigma^2 I, K = C A^T S^-1, m~ = m + K (y - A m), C~ = C - K A C, and
    w~ proportional to w N(y; A m, S), with the Gaussian density written out."""
    w, m, C = prior.weights.double(), prior.means.double(), prior.covs.double()
    A, y = A.double(), y.double()
    S = A @ C @ A.T + noise**2 * torch.eye(len(A), dtype=A.dtype)
    K = C @ A.T @ torch.linalg.inv(S)
    residual = y - m @ A.T
    means = m + (K @ residual.unsqueeze(-1)).squeeze(-1)
    covs = C - K @ A @ C
    maha = (residual.unsqueeze(-2) @ torch.linalg.solve(S, residual.unsqueeze(-1))).flatten()
    log_w = w.log() - 0.5 * (maha + torch.logdet(2 * math.pi * S))
    return log_w.softmax(0), means, covs


def test_default_mixture_problem_is_the_cardoso_setting():
    task = GaussianMixtureInverseProblem(dim=8, obs_dim=2, seed=1)
    grid = 8.0 * torch.arange(-2, 3.0)
    assert task.prior.means.shape == (25, 8) and task.operator.shape == (2, 8)
    torch.testing.assert_close(task.prior.means, torch.cartesian_prod(grid, grid).repeat(1, 4))
    torch.testing.assert_close(task.prior.covs, torch.eye(8).expand(25, 8, 8))
    singular = torch.linalg.svdvals(task.operator)
    assert ((singular > 0) & (singular < 1)).all()
    assert 0 < task.noise < float(singular.max()) + 1e-6
    assert task.data["y"].shape == (2,)
    # the seed draws everything: a given noise keeps the prior, operator and observation noise
    other = GaussianMixtureInverseProblem(dim=8, obs_dim=2, seed=1, noise=0.3)
    assert torch.equal(other.operator, task.operator) and other.noise == 0.3
    assert torch.equal(other.prior.weights, task.prior.weights)
    assert not torch.equal(GaussianMixtureInverseProblem(8, 2, seed=2).operator, task.operator)
    with pytest.raises(ValueError, match="even"):
        GaussianMixtureInverseProblem(dim=7)
    with pytest.raises(ValueError, match="obs_dim"):
        GaussianMixtureInverseProblem(dim=4, obs_dim=5)
    with pytest.raises(ValueError, match="operator"):
        GaussianMixtureInverseProblem(dim=4, operator=torch.ones(1, 3))


def test_circle_mixture_problem():
    task = GaussianMixtureInverseProblem.circle(dim=3, seed=4)
    assert task.name == "gmm-circle" and task.noise == 0.5
    torch.testing.assert_close(task.prior.weights, torch.full((4,), 0.25))
    torch.testing.assert_close(task.prior.means[:, :2].norm(dim=-1), torch.full((4,), 3.0))
    torch.testing.assert_close(task.prior.covs, 0.25 * torch.eye(3).expand(4, 3, 3))
    torch.testing.assert_close(task.operator, torch.tensor([[1.0, 0.0, 0.0]]))
    exact = task.posterior()["x"]
    assert sorted(exact.weights.tolist())[-2] > 0.3  # two modes of comparable weight


@pytest.mark.parametrize(
    "task",
    [
        GaussianMixtureInverseProblem(dim=8, obs_dim=2, seed=1),
        GaussianMixtureInverseProblem(dim=8, obs_dim=1, seed=4),
        GaussianMixtureInverseProblem.circle(seed=0),
    ],
    ids=["cardoso-8-2", "cardoso-8-1", "circle"],
)
def test_mixture_posterior_and_reference_draws(task):
    """The posterior mixture equals the Kalman-gain form; the reference draws (drawn component
    by component) have the mixture's mean and variances within their Monte Carlo error."""
    weights, means, covs = _posterior_by_gain(
        task.prior, task.operator, task.noise, task.data["y"]
    )
    exact = task.posterior()["x"]
    torch.testing.assert_close(exact.weights.double(), weights, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(exact.means.double(), means, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(exact.covs.double(), covs, atol=1e-5, rtol=1e-4)
    mean = weights @ means
    second = torch.einsum("k,kij->ij", weights, covs + means.unsqueeze(-1) * means.unsqueeze(-2))
    variance = (second - torch.outer(mean, mean)).diagonal()
    n = 20_000
    draws = task.reference_samples(n, seed=5)["x"].double()
    assert draws.shape == (n, len(mean))
    assert torch.equal(draws, task.reference_samples(n, seed=5)["x"].double())
    assert _within(draws.mean(0), mean, (variance / n).sqrt())
    squares = (draws - mean) ** 2
    assert _within(squares.mean(0), variance, squares.std(0) / math.sqrt(n))


# -------------------------------------------------------------------------------- two moons


def _simulate(theta, r, a):
    """The two-moons map, written out: (r, a) -> x given theta."""
    u = (theta[0] + theta[1]) / math.sqrt(2)
    v = (theta[1] - theta[0]) / math.sqrt(2)
    return torch.stack((r * torch.cos(a) + 0.25 - u.abs(), r * torch.sin(a) + v))


def test_two_moons_density_is_the_change_of_variables():
    """log p(x | theta) = log N(r; 0.1, 0.01^2) + log(1/pi) - log |det dx/d(r, a)|, with the
    Jacobian taken by autograd of the simulator's map, on both sides of the half-plane cut
    (r < 0 lands left of it)."""
    theta = torch.tensor([0.3, -0.5], dtype=torch.float64)
    likelihood = TwoMoonsLikelihood(theta)
    for r, a in [(0.1, 0.0), (0.09, 1.2), (0.125, -1.5), (0.05, 0.7), (-0.03, 0.4)]:
        r, a = torch.tensor(r, dtype=torch.float64), torch.tensor(a, dtype=torch.float64)
        jacobian = torch.autograd.functional.jacobian(
            lambda ra: _simulate(theta, ra[0], ra[1]), torch.stack((r, a))
        )
        expected = (
            torch.distributions.Normal(*torch.tensor([0.1, 0.01], dtype=torch.float64)).log_prob(r)
            - math.log(math.pi)
            - torch.linalg.det(jacobian).abs().log()
        )
        got = likelihood.log_prob(_simulate(theta, r, a))
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_two_moons_simulator_draws_follow_its_density():
    """Chi-square test of 200,000 simulator draws against the cell probabilities of
    exp(log_prob), integrated by a 16 x 16 midpoint rule per 0.01-cell (cells aligned with the
    density's jump at q_1 = 0, so the rule's error is O(h^2), about 1e-4 relative). The density
    integrates to 1 over a box holding all but ~1e-9 of the mass."""
    theta = torch.tensor([0.3, -0.5], dtype=torch.float64)
    likelihood = TwoMoonsLikelihood(theta)
    center = _simulate(theta, torch.tensor(0.0, dtype=torch.float64), torch.tensor(0.0))
    cell, sub = 0.01, 16
    edges1 = torch.arange(-2, 17, dtype=torch.float64) * cell  # q_1 in [-0.02, 0.16]
    edges2 = torch.arange(-16, 17, dtype=torch.float64) * cell  # q_2 in [-0.16, 0.16]
    fine = (torch.arange(sub, dtype=torch.float64) + 0.5) * cell / sub
    q1 = (edges1[:-1, None] + fine).flatten()
    q2 = (edges2[:-1, None] + fine).flatten()
    grid = torch.stack(torch.meshgrid(q1, q2, indexing="ij"), -1) + center
    density = likelihood.log_prob(grid).exp() * (cell / sub) ** 2
    cells = density.reshape(len(edges1) - 1, sub, len(edges2) - 1, sub).sum((1, 3)).flatten()
    assert abs(float(cells.sum()) - 1) < 1e-3

    n = 200_000
    with torch.random.fork_rng():
        torch.manual_seed(0)
        draws = likelihood.sample((n,))
    assert draws.shape == (n, 2)
    q = draws - center
    i = torch.bucketize(q[:, 0].contiguous(), edges1) - 1
    j = torch.bucketize(q[:, 1].contiguous(), edges2) - 1
    inside = (i >= 0) & (i < len(edges1) - 1) & (j >= 0) & (j < len(edges2) - 1)
    index = i[inside] * (len(edges2) - 1) + j[inside]
    counts = torch.bincount(index, minlength=len(cells)).double()
    expected = n * cells
    large = expected >= 5
    observed = torch.cat((counts[large], (n - counts[large].sum()).reshape(1)))
    expected = torch.cat((expected[large], (n - expected[large].sum()).reshape(1)))
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    df = len(observed) - 1
    assert df > 100
    assert chi2 < df + Z * math.sqrt(2 * df)


def test_two_moons_likelihood_shapes_and_gradients():
    likelihood = TwoMoonsLikelihood(torch.zeros(4, 2))
    x = likelihood.sample((3,))
    assert x.shape == (3, 4, 2) and likelihood.log_prob(x).shape == (3, 4)
    assert likelihood.expand((5, 4)).sample().shape == (5, 4, 2)
    with pytest.raises(ValueError, match="theta"):
        TwoMoonsLikelihood(torch.zeros(3))
    task = TwoMoons()
    theta = torch.linspace(-0.9, 0.9, 16).reshape(8, 2).requires_grad_()
    (grad,) = torch.autograd.grad(task.log_joint({"theta": theta}).sum(), theta)
    assert torch.isfinite(grad).all()
    with pytest.raises(NotImplementedError, match="reference_samples"):
        task.posterior()


def _moons_statistics(theta, x_o):
    """Functions of theta whose posterior means are compared: the moments, the branch
    (u > 0), and the radius and angle of the moon's point q."""
    u = (theta[:, 0] + theta[:, 1]) / math.sqrt(2)
    v = (theta[:, 1] - theta[:, 0]) / math.sqrt(2)
    q1, q2 = x_o[0] + u.abs() - 0.25, x_o[1] - v
    radius = torch.hypot(q1, q2)
    return torch.stack(
        [
            theta[:, 0],
            theta[:, 1],
            theta[:, 0] ** 2,
            theta[:, 1] ** 2,
            theta[:, 0] * theta[:, 1],
            (u > 0).double(),
            radius,
            (radius - 0.1) ** 2,
            torch.atan2(q2, q1),
        ],
        dim=-1,
    )


def _posterior_on_grid(task, h):
    """theta at the centres of a grid of the rotated coordinates (u, v) = ((theta_1 +
    theta_2), (theta_2 - theta_1)) / sqrt 2 (a rotation: unit Jacobian), the normalised
    posterior weights exp(log prior + log likelihood) from the model's log joint (the uniform
    prior gives zero outside the box), and the likelihood's weights alone.

    The grid holds the posterior's support: |u| within [-0.01, 0.16] of 0.25 - x_1 (the moon's
    radius r = 0.1 +- 6 sd), v within 0.16 of x_2. The midpoint rule is O(h^2) on smooth
    integrands; the density jumps at |u| = 0.25 - x_1 (the ends of the moon, q_1 = 0), which
    falls on cell edges, and on the box edges u + v = sqrt 2 and v - u = sqrt 2 (the active
    ones), which pass through the midpoints of cell edges, where the cells cut on either side
    cancel to first order. (Measured: the rule's error at h = 1/2000 is below 1e-7 for every
    statistic, against standard errors above 3e-7.)"""
    x1, x2 = task.data["x"].double().tolist()
    start = 0.25 - x1
    k = torch.arange(round((start - 0.01) / h), round((start + 0.16) / h), dtype=torch.float64)
    u = (k + 0.5) * h
    offset = (math.sqrt(2) - h / 2) % h
    j = torch.arange(math.floor((x2 - 0.16) / h), math.ceil((x2 + 0.16) / h))
    v = (j.double() + 0.5) * h + offset
    u, v = (g.flatten() for g in torch.meshgrid(torch.cat((u, -u)), v, indexing="ij"))
    theta = torch.stack((u - v, u + v), dim=-1) / math.sqrt(2)
    problem = condgen.Problem(task.model, task.data)
    with pyro.validation_enabled(False):  # the prior's log density is -inf outside the box
        log_joint = torch.cat([task.log_joint({"theta": t}) for t in theta.split(2**18)])
        log_lik = torch.cat([problem.log_likelihood({"theta": t}) for t in theta.split(2**18)])
    posterior = (log_joint.double() - log_joint.max()).exp()
    likelihood = (log_lik.double() - log_lik.max()).exp()
    return theta, posterior / posterior.sum(), likelihood / likelihood.sum()


@pytest.mark.parametrize("observation", [None, (-0.6, 0.5)], ids=["origin", "box-cut"])
def test_two_moons_exact_sampler_matches_prior_times_likelihood(observation):
    """Posterior means of 9 statistics from 200,000 draws of the exact sampler against a
    quadrature of prior x likelihood (the model's log joint). At x_o = (0, 0) the box is
    inactive; at (-0.6, 0.5) it cuts away about half of the likelihood's mass."""
    task = TwoMoons(observation=observation)
    x_o = task.data["x"].double().tolist()
    theta, posterior, likelihood = _posterior_on_grid(task, h=1 / 2000)
    outside = float(likelihood @ (theta.abs() > 1).any(-1).double())
    assert outside < 1e-6 if observation is None else 0.3 < outside < 0.7
    truth = posterior @ _moons_statistics(theta, x_o)
    n = 200_000
    draws = task.reference_samples(n, seed=3)["theta"]
    assert draws.shape == (n, 2) and (draws.abs() <= 1).all()
    statistics = _moons_statistics(draws.double(), x_o)
    assert _within(statistics.mean(0), truth, statistics.std(0) / math.sqrt(n))


def test_two_moons_observations():
    assert torch.equal(TwoMoons().data["x"], torch.zeros(2))
    simulated = TwoMoons(seed=2, observation="simulated")
    assert simulated.data["x"].shape == (2,) and (simulated.truth.abs() <= 1).all()
    assert torch.equal(simulated.data["x"], TwoMoons(seed=2, observation="simulated").data["x"])
    assert not torch.equal(
        simulated.data["x"], TwoMoons(seed=3, observation="simulated").data["x"]
    )
    # the simulated observation is one the sampler reaches from the prior box
    assert TwoMoons(seed=2, observation="simulated").reference_samples(100)["theta"].shape == (
        100,
        2,
    )
    with pytest.raises(ValueError, match="observation"):
        TwoMoons(observation=[0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="reach"):
        TwoMoons(observation=[5.0, 5.0]).reference_samples(10, max_proposals=10**5)


# --------------------------------------------------------------------------------- registry


def test_registry_names_descriptions_and_methods():
    listed = available_tasks()
    expected = [
        "gmm",
        "gmm-circle",
        "gaussian-linear",
        "two-moons",
        "normal-normal",
        "linear-regression",
        "beta-binomial",
    ]
    assert set(expected) <= set(listed)
    methods = set(condgen.methods.available())
    for name in expected:
        assert isinstance(listed[name], str) and listed[name] and "\n" not in listed[name]
        task = get_task(name)
        assert isinstance(task, Task) and task.name == name and task.exact
        assert task.default_methods and set(task.default_methods) <= methods
    assert get_task("gmm", dim=4, obs_dim=2, seed=1).operator.shape == (2, 4)
    assert get_task("gmm-circle", dim=3).prior.means.shape == (4, 3)
    assert isinstance(get_task("two-moons", observation=(0.1, 0.0)), TwoMoons)


def test_registry_errors():
    with pytest.raises(ValueError, match=r"unknown task 'nope'.*two-moons.*beta-binomial"):
        get_task("nope")
    with pytest.raises(ValueError, match=r"no option 'width'.*dim, obs_dim, prior"):
        get_task("gmm", width=3)
    with pytest.raises(ValueError, match=r"no option 'dim'.*seed, observation"):
        get_task("two-moons", dim=2)


def test_register_task(monkeypatch):
    monkeypatch.setattr(tasks_module, "TASKS", dict(tasks_module.TASKS))
    monkeypatch.setattr(tasks_module, "_DESCRIPTIONS", dict(tasks_module._DESCRIPTIONS))

    @register_task("long-run")
    class LongRun(Task):
        """A task without a closed form: its reference is an approximate long run."""

        name = "long-run"
        exact = False

        def __init__(self, scale: float = 1.0):
            self.scale, self.data = scale, {"y": torch.tensor(0.0)}

        def model(self) -> None: ...

        def reference_samples(self, num_samples: int, seed: int = 0):
            return {"x": self.scale * torch.ones(num_samples)}

    assert available_tasks()["long-run"].startswith("A task without a closed form")
    task = get_task("long-run", scale=2.0)
    assert not task.exact and float(task.reference_samples(3)["x"][0]) == 2.0
    with pytest.raises(NotImplementedError, match="approximate"):
        task.posterior()
    with pytest.raises(ValueError, match=r"no option 'size'.*scale"):
        get_task("long-run", size=1)
    register_task("long-run", LongRun)  # the same class again (a module reload): accepted
    with pytest.raises(ValueError, match="taken"):
        register_task("long-run", NormalNormal)
    register_task("beta", lambda a=1.0: BetaBinomial(a=a), description="a Beta prior")
    assert available_tasks()["beta"] == "a Beta prior" and get_task("beta", a=3.0).a == 3.0


def test_optional_task_modules_are_imported_when_present(monkeypatch):
    monkeypatch.setattr(tasks_module, "_OPTIONAL_MODULES", ("condgen.evaluate.not_written",))
    assert "gmm" in available_tasks()  # an absent module is skipped


# ------------------------------------------------------------------------------ toy shapes


def _quadrature_moments(task, name, low, high, points, warp=None):
    r"""Posterior means and standard deviations of a 2-D latent by quadrature of the task's
    log joint (through the Pyro model) on a uniform grid of ``(a, b)``; ``warp`` maps the grid
    to the latents and returns them with the log-Jacobian of the map."""
    axis = torch.linspace(low, high, points, dtype=torch.float64)
    a, b = (g.reshape(-1) for g in torch.meshgrid(axis, axis, indexing="ij"))
    latents, log_jacobian = (torch.stack([a, b], -1), 0.0) if warp is None else warp(a, b)
    values = latents.float()
    site = {name: values} if name != "funnel" else {"v": values[:, 0], "x": values[:, 1]}
    log_p = task.log_joint(site).double() + log_jacobian
    weights = (log_p - log_p.max()).exp()
    weights = weights / weights.sum()
    mean = weights @ latents
    sd = (weights @ (latents - mean) ** 2).sqrt()
    return mean, sd


TOYS = {
    "two-modes": ("theta", -9.0, 9.0, None),
    "banana": ("z", -6.0, 8.0, None),
    "banana-density": ("theta", -9.0, 9.0, None),
    "x-shaped": ("theta", -9.0, 9.0, None),
    # x = exp(v) w: the posterior of (v, w) is smooth where that of (v, x) is a funnel
    "funnel": ("funnel", -8.0, 8.0, lambda v, w: (torch.stack([v, v.exp() * w], -1), v)),
}


@pytest.mark.parametrize("name", sorted(TOYS))
def test_toy_exact_samplers_match_quadrature(name):
    """The exact samplers of the toy posteriors (inverse CDF or grid, written from the math)
    agree with quadrature of the model's own log joint on an independent grid: means and
    standard deviations within their Monte Carlo error (Z standard errors)."""
    task = get_task(name)
    site, low, high, warp = TOYS[name]
    mean, sd = _quadrature_moments(task, site, low, high, 801, warp)
    n = 20_000
    first = task.reference_samples(n, seed=3)
    again = task.reference_samples(n, seed=3)
    assert all(torch.equal(value, again[k]) for k, value in first.items())
    keys = ("v", "x") if site == "funnel" else (site,)
    draws = torch.cat([first[k].reshape(n, -1) for k in keys], -1).double()
    assert draws.shape == (n, 2)
    assert _within(draws.mean(0), mean, sd / math.sqrt(n))
    squares = (draws - mean) ** 2
    assert _within(squares.mean(0), sd**2, squares.std(0) / math.sqrt(n))
