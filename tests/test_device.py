"""Device and dtype follow the data and the prior: every registered conditioning method, every
amortized estimator, every guide and the priors' training run a tiny problem whose tensors lie
on a target (device, dtype), and their draws, log-weights, statistics and ArviZ export come back
on that device in that dtype.

Two targets: (cpu, float64), which runs everywhere and checks that no float32 step hides inside
(a float64 draw that went through float32 holds only float32 values), and (cuda, float32), which
runs on a GPU and is skipped with the reason "no CUDA device" without one. The CUDA-only paths
of training (bf16 autocast on CUDA, ``Prior.compile`` with the inductor backend) have their GPU
cases here too.

Sizes are the smallest that run each method's code; accuracy is tested elsewhere.
"""

import math
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import condgen
from condgen.guides import (
    AmortizedFlowGuide,
    AmortizedImplicitGuide,
    AmortizedNormal,
    AmortizedSemiImplicitGuide,
)
from condgen.infer import FMPE, NPE, NPSE, AdversarialELBO
from condgen.methods.guide_names import GUIDES
from condgen.priors import (
    MLP,
    DiffusionPrior,
    FlowMatchingPrior,
    FlowPrior,
    GaussianMixturePrior,
    UNet,
)

NO_CUDA = not torch.cuda.is_available()
CUDA = pytest.mark.skipif(NO_CUDA, reason="no CUDA device")

TARGETS = [
    pytest.param("cpu", torch.float64, id="cpu-float64"),
    pytest.param("cuda", torch.float32, id="cuda-float32", marks=CUDA),
]

NUM_SAMPLES = 16


def float32_only(x: torch.Tensor) -> bool:
    """Whether every value of ``x`` is a float32 number: what a float64 result that went
    through float32 holds (continuous float64 draws almost never do)."""
    x = x.detach()
    return bool(torch.equal(x, x.float().to(x.dtype)))


def check_tensor(x: torch.Tensor, device: str, dtype: torch.dtype, what: str) -> None:
    """``x`` is floating, on ``device``, in ``dtype``, finite, and (for float64) not rounded
    to float32."""
    assert x.device.type == device, f"{what} is on {x.device}, expected {device}"
    assert x.dtype == dtype, f"{what} is {x.dtype}, expected {dtype}"
    assert bool(torch.isfinite(x).all()), f"{what} is not finite"
    if dtype == torch.float64:
        assert not float32_only(x), f"{what} went through float32"


# ----------------------------------------------------------------------------------- problems


class Problems:
    """The tiny models of one target: a four-mode Gaussian mixture prior (exact log-density
    and denoiser), an untrained path prior with an MLP, a conditional one, and a model with a
    second latent beside the neural site."""

    def __init__(self, device: str, dtype: torch.dtype):
        self.device, self.dtype = device, dtype
        self.options = {"device": device, "dtype": dtype}
        angles = torch.arange(4, **self.options) * (torch.pi / 2) + torch.pi / 4
        means = 3 * torch.stack([angles.cos(), angles.sin()], -1)
        covs = 0.25 * torch.eye(2, **self.options).repeat(4, 1, 1)
        self.mixture = GaussianMixturePrior(torch.ones(4, **self.options), means, covs)
        torch.manual_seed(0)
        self.path = DiffusionPrior(MLP(2, hidden=(16,)), event_shape=(2,), steps=4)
        self.path.to(**self.options)
        self.conditional = DiffusionPrior(MLP(2, context=2, hidden=(16,)), event_shape=(2,))
        self.conditional.to(**self.options)
        self.data = {"y": torch.tensor([0.3], **self.options)}

    def observed(self, prior):
        def model():
            x = pyro.sample("x", prior)
            pyro.sample("y", dist.Normal(x[..., :1], 0.5).to_event(1))

        return model

    def joint(self, prior):
        def model():
            s = pyro.sample("s", dist.HalfNormal(torch.ones((), **self.options)))
            x = pyro.sample("x", prior)
            pyro.sample("y", dist.Normal(x[..., :1], s.unsqueeze(-1)).to_event(1))

        return model

    def context_model(self):
        context = torch.tensor([1.0, 0.0], **self.options)
        return self.observed(self.conditional.given(context))

    def classifier(self, x_t, t):
        return self.mixture.component_log_probs(x_t, t)[..., 0]


_PROBLEMS: dict = {}
_ESTIMATORS: dict = {}


def problems(device: str, dtype: torch.dtype) -> Problems:
    if (device, dtype) not in _PROBLEMS:
        _PROBLEMS[device, dtype] = Problems(device, dtype)
    return _PROBLEMS[device, dtype]


def estimator(cls, device: str, dtype: torch.dtype):
    """An estimator of ``cls`` fitted (one epoch) on the mixture model of the target."""
    key = (cls, device, dtype)
    if key not in _ESTIMATORS:
        p = problems(device, dtype)
        fitted = cls(p.observed(p.mixture), observed=["y"])
        fitted.fit(num_simulations=200, max_epochs=1, progress=False, seed=0)
        _ESTIMATORS[key] = fitted
    return _ESTIMATORS[key]


#: For each registered method: (model, options) of a tiny run on a target's Problems.
CASES = {
    "nuts": lambda p: (p.observed(p.mixture), {"num_chains": 1, "warmup_steps": 10}),
    "svi": lambda p: (p.observed(p.mixture), {"num_steps": 10}),
    "importance": lambda p: (p.observed(p.mixture), {"num_steps": 10}),
    "tempered": lambda p: (p.joint(p.mixture), {}),
    "gibbs": lambda p: (
        p.joint(p.path),
        {"num_chains": 1, "warmup_steps": 3, "steps": 4, "num_particles": 8},
    ),
    "smc": lambda p: (p.observed(p.path), {"steps": 4}),
    "tds": lambda p: (p.observed(p.path), {"steps": 4}),
    "langevin": lambda p: (p.observed(p.path), {"steps": 4}),
    "dps": lambda p: (p.observed(p.path), {"steps": 4}),
    "pigdm": lambda p: (p.observed(p.path), {"steps": 4}),
    "classifier": lambda p: (p.observed(p.mixture), {"steps": 4, "classifier": p.classifier}),
    "cfg": lambda p: (p.context_model(), {"steps": 4}),
    "npe": lambda p: (p.observed(p.mixture), {"estimator": estimator(NPE, p.device, p.dtype)}),
    "fmpe": lambda p: (p.observed(p.mixture), {"estimator": estimator(FMPE, p.device, p.dtype)}),
    "npse": lambda p: (p.observed(p.mixture), {"estimator": estimator(NPSE, p.device, p.dtype)}),
}


def test_every_method_has_a_case():
    assert set(CASES) == set(condgen.methods.available())


def check_posterior(post, device: str, dtype: torch.dtype) -> None:
    """Draws, log-weights, statistics and the ArviZ export on the target."""
    method = post.method
    for name, draws in post.samples.items():
        check_tensor(draws, device, dtype, f"{method}: draws of {name!r}")
    if post.log_weights is not None:
        check_tensor(post.log_weights, device, dtype, f"{method}: log_weights")
    for name, value in post.sample_stats.items():
        assert value.device.type == device, (method, name, value.device)
        if value.is_floating_point():
            assert value.dtype == dtype, (method, name, value.dtype)
    for name, value in post.stats.items():
        if isinstance(value, torch.Tensor):
            assert value.device.type == device, (method, name, value.device)
            if value.is_floating_point():
                assert value.dtype == dtype, (method, name, value.dtype)
        elif name.startswith("log_evidence") and isinstance(value, float):
            assert not math.isnan(value) or name == "log_evidence_se", (method, name)
    idata = post.to_arviz()
    expected = np.dtype(str(dtype).removeprefix("torch."))
    for name in post.samples:
        assert idata.posterior[name].dtype == expected, (method, name)
    for name in post.problem.observed_sites:
        assert idata.log_likelihood[name].dtype == expected, (method, name)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(("device", "dtype"), TARGETS)
@pytest.mark.parametrize("method", sorted(CASES))
def test_method_follows_device_and_dtype(method, device, dtype):
    p = problems(device, dtype)
    model, options = CASES[method](p)
    post = condgen.condition(
        model, p.data, method=method, num_samples=NUM_SAMPLES, seed=0, progress=False, **options
    )
    check_posterior(post, device, dtype)


# --------------------------------------------------------------------------------- estimators


@pytest.mark.parametrize(("device", "dtype"), TARGETS)
@pytest.mark.parametrize("cls", [NPE, FMPE, NPSE], ids=lambda c: c.__name__)
def test_estimator_trains_on_the_simulations_device_and_dtype(cls, device, dtype):
    fitted = estimator(cls, device, dtype)
    for name, tensor in [*fitted.named_parameters(), *fitted.named_buffers()]:
        assert tensor.device.type == device, (name, tensor.device)
        if tensor.is_floating_point():
            assert tensor.dtype == dtype, (name, tensor.dtype)
    y = problems(device, dtype).data["y"]
    draws = fitted.sample({"y": y}, 8)["x"]
    check_tensor(draws, device, dtype, f"{cls.__name__} draws")
    if cls is NPE:  # the path estimators' log_prob solves an ODE: slow, and tested elsewhere
        check_tensor(fitted.log_prob({"x": draws}, {"y": y}), device, dtype, "log_prob")


# ------------------------------------------------------------------------------------- guides


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(("device", "dtype"), TARGETS)
@pytest.mark.parametrize("guide", sorted(GUIDES))
def test_guide_follows_device_and_dtype(guide, device, dtype):
    options = {"device": device, "dtype": dtype}

    def model():
        scale = pyro.sample("scale", dist.LogNormal(torch.zeros((), **options), 0.5))
        with pyro.plate("p", 2, device=device):
            loc = pyro.sample("loc", dist.Normal(torch.zeros((), **options), 1.0))
            pyro.sample("y", dist.Normal(loc, scale))

    data = {"y": torch.tensor([0.3, -0.2], **options)}
    post = condgen.condition(
        model, data, method="svi", guide=guide, num_steps=5, num_samples=8, seed=0,
        progress=False,
    )  # fmt: skip
    check_posterior(post, device, dtype)


class _NormalEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(1, 2)

    def forward(self, x):
        loc, scale = self.linear(x.unsqueeze(-1)).chunk(2, -1)
        return loc, nn.functional.softplus(scale)


def _encoder(features: int) -> nn.Module:
    return nn.Sequential(nn.Unflatten(-1, (-1, 1)), nn.Linear(1, features))


AMORTIZED = {
    "AmortizedNormal": lambda model, x: AmortizedNormal(model, _NormalEncoder(), data={"x": x}),
    "AmortizedFlowGuide": lambda model, x: AmortizedFlowGuide(
        model, _encoder(4), data={"x": x}, hidden_features=(8,)
    ),
    "AmortizedSemiImplicitGuide": lambda model, x: AmortizedSemiImplicitGuide(
        model, _encoder(4), hidden=(8,), data={"x": x}
    ),
    "AmortizedImplicitGuide": lambda model, x: AmortizedImplicitGuide(
        model, _encoder(4), hidden=(8,), data={"x": x}
    ),
}


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(("device", "dtype"), TARGETS)
@pytest.mark.parametrize("guide", sorted(AMORTIZED))
def test_amortized_guide_follows_device_and_dtype(guide, device, dtype):
    options = {"device": device, "dtype": dtype}
    torch.manual_seed(0)
    x = torch.randn(6, **options)

    def model():
        mu = pyro.sample("mu", dist.Normal(torch.zeros((), **options), 5.0))
        with pyro.plate("data", 6, device=device):
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("x", dist.Normal(z, 0.5))

    built = AMORTIZED[guide](model, x)
    built.encoder.to(**options)
    extra = {"loss": AdversarialELBO(num_particles=4)} if guide == "AmortizedImplicitGuide" else {}
    post = condgen.condition(
        model, {"x": x}, method="svi", guide=built, num_steps=5, num_samples=8, seed=0,
        progress=False, **extra,
    )  # fmt: skip
    check_posterior(post, device, dtype)


# ------------------------------------------------------------------------------------- priors


@pytest.mark.parametrize(("device", "dtype"), TARGETS)
@pytest.mark.parametrize("kind", ["diffusion", "flow_matching", "flow"])
def test_prior_fit_follows_the_data(kind, device, dtype):
    torch.manual_seed(0)
    data = torch.randn(64, 2, device=device, dtype=dtype)
    if kind == "flow":
        prior = FlowPrior.build(2, flow="maf", transforms=1, hidden_features=[8])
    else:
        cls = DiffusionPrior if kind == "diffusion" else FlowMatchingPrior
        prior = cls(MLP(2, hidden=(8,)), event_shape=(2,), steps=4)
    losses = prior.fit(data, steps=3, batch_size=16, progress=False)
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    network = prior.flow if kind == "flow" else prior.network
    for name, p in network.named_parameters():
        assert p.device.type == device and p.dtype == dtype, (name, p.device, p.dtype)
    with torch.no_grad():
        check_tensor(prior.sample((8,)), device, dtype, f"{kind} draws")


@pytest.mark.parametrize(("device", "dtype"), TARGETS)
def test_mixture_prior_moves(device, dtype):
    covs = torch.eye(2).expand(3, 2, 2)
    prior = GaussianMixturePrior(torch.ones(3), torch.randn(3, 2), covs).to(device, dtype)
    x = prior.sample((8,))
    check_tensor(x, device, dtype, "draws")
    check_tensor(prior.log_prob(x), device, dtype, "log_prob")
    check_tensor(prior.denoise(x, 0.5), device, dtype, "denoise")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mixture = prior.mixture(0.5)
    assert mixture.mean.device.type == device and mixture.mean.dtype == dtype


# ---------------------------------------------------------------------- mixed precision (bf16)


def _two_moons_like(device: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return (0.5 * torch.randn(512, 2, generator=generator) + 1.0).to(device)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_bf16_autocast_fit_trains_with_float32_weights(device):
    r"""A bf16-autocast fit of a small path prior: its loss falls and stays finite, its
    weights stay float32, and its losses differ from those of the same fp32 fit (the autocast
    is in force), which keeps the default path as it was."""
    data = _two_moons_like(device)
    losses = {}
    for autocast in (None, torch.bfloat16):
        torch.manual_seed(0)
        prior = DiffusionPrior(MLP(2, hidden=(32, 32)), event_shape=(2,))
        generator = torch.Generator(device).manual_seed(0)
        losses[autocast] = prior.fit(
            data, steps=150, batch_size=64, progress=False, generator=generator,
            autocast=autocast,
        )  # fmt: skip
        assert {p.dtype for p in prior.network.parameters()} == {torch.float32}
    bf16 = losses[torch.bfloat16]
    assert all(math.isfinite(v) for v in bf16)
    assert np.mean(bf16[-20:]) < 0.5 * np.mean(bf16[:20])
    assert bf16 != losses[None]
    # bf16 rounds the activations to 8 bits of mantissa: close, not equal, to the fp32 fit
    assert abs(np.mean(bf16[-20:]) - np.mean(losses[None][-20:])) < 0.1


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("cls", [NPE, FlowPrior], ids=lambda c: c.__name__)
def test_bf16_autocast_fits_flows_and_estimators(cls, device):
    torch.manual_seed(0)
    if cls is FlowPrior:
        prior = FlowPrior.build(2, flow="maf", transforms=1, hidden_features=[16])
        losses = prior.fit(
            _two_moons_like(device), steps=30, progress=False, autocast=torch.bfloat16
        )
        module = prior.flow
    else:
        p = problems(device, torch.float32)
        module = NPE(p.observed(p.mixture), observed=["y"])
        losses = module.fit(
            num_simulations=200, max_epochs=2, progress=False, seed=0, autocast=torch.bfloat16
        )
    assert all(math.isfinite(v) for v in losses)
    assert {p.dtype for p in module.parameters()} == {torch.float32}
    assert {p.device.type for p in module.parameters()} == {device}


@pytest.mark.parametrize("autocast", [torch.float16, torch.float64, "bf16"])
def test_autocast_refuses_other_values(autocast):
    prior = DiffusionPrior(MLP(2, hidden=(8,)), event_shape=(2,))
    with pytest.raises(ValueError, match=r"autocast must be None or torch\.bfloat16"):
        prior.fit(torch.randn(16, 2), steps=1, progress=False, autocast=autocast)


def test_autocast_is_part_of_the_checkpoint_identity(tmp_path):
    data = torch.randn(64, 2)
    path = tmp_path / "fit.ckpt"
    DiffusionPrior(MLP(2, hidden=(8,)), event_shape=(2,)).fit(
        data, steps=2, progress=False, checkpoint=path, autocast=torch.bfloat16
    )
    with pytest.raises(ValueError, match=r"checkpoint=.*autocast"):
        DiffusionPrior(MLP(2, hidden=(8,)), event_shape=(2,)).fit(
            data, steps=2, progress=False, checkpoint=path
        )


# -------------------------------------------------------------------------------- torch.compile


class CountingBackend:
    r"""A :func:`torch.compile` backend that runs the captured graphs eagerly and counts them:
    it checks the plumbing without a C compiler (the inductor backend needs one and tens of
    seconds per graph on a CPU)."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, graph, inputs):
        self.graphs += 1
        return graph.forward


@pytest.mark.filterwarnings("ignore")
def test_compile_keeps_draws_weights_and_saving(tmp_path):
    torch.manual_seed(0)
    prior = DiffusionPrior(MLP(2, hidden=(16,)), event_shape=(2,), steps=6)
    prior.fit(torch.randn(128, 2), steps=10, progress=False)
    reference = DiffusionPrior(MLP(2, hidden=(16,)), event_shape=(2,), steps=6)
    reference.network.load_state_dict(prior.network.state_dict())
    backend = CountingBackend()
    assert prior.compile(backend=backend) is prior
    assert isinstance(prior.network, MLP)  # the module is compiled in place, not wrapped

    def draws(p):
        return p.sample((8,), generator=torch.Generator().manual_seed(1))

    assert torch.equal(draws(prior), draws(reference))
    assert backend.graphs > 0
    p = problems("cpu", torch.float32)
    for method in ("dps", "smc"):  # the denoiser's VJP goes through the compiled graph
        a, b = (
            condgen.condition(
                p.observed(x), p.data, method=method, num_samples=8, seed=0, progress=False,
                steps=4,
            ).samples["x"]
            for x in (prior, reference)
        )  # fmt: skip
        assert torch.equal(a, b), method
    prior.save(tmp_path / "prior.pt")
    loaded = condgen.priors.load(tmp_path / "prior.pt")
    assert set(loaded.network.state_dict()) == set(reference.network.state_dict())
    assert torch.equal(draws(loaded), draws(reference))


def test_compile_needs_a_network():
    with pytest.raises(TypeError, match="GaussianMixturePrior has no network"):
        problems("cpu", torch.float64).mixture.compile()


@CUDA
def test_compile_inductor_unet_on_cuda():
    torch.manual_seed(0)
    prior = DiffusionPrior(UNet(1, base=16), event_shape=(1, 8, 8), steps=8).to("cuda")
    reference = DiffusionPrior(UNet(1, base=16), event_shape=(1, 8, 8), steps=8).to("cuda")
    reference.network.load_state_dict(prior.network.state_dict())
    prior.compile()
    a, b = (
        p.sample((16,), generator=torch.Generator("cuda").manual_seed(1))
        for p in (prior, reference)
    )
    assert torch.allclose(a, b, atol=1e-3, rtol=1e-3)
