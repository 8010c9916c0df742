r"""Semi-implicit and implicit guides: latents pushed forward from noise through networks."""

from __future__ import annotations

__all__ = [
    "AmortizedImplicitGuide",
    "AmortizedSemiImplicitGuide",
    "ImplicitGuide",
    "ImplicitLatent",
    "MixingNetwork",
    "SemiImplicitGuide",
    "SemiImplicitLatent",
]

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.autoguide.initialization import init_to_mean, init_to_median
from torch import Size, Tensor, nn

from .amortized import _AmortizedGuide, _datum_major
from .avb import AdversarialELBO
from .latents import (
    ImplicitLatent,
    MixingNetwork,
    SemiImplicitLatent,
    _mixing_noise,
    _network,
    _NoiseLatent,
    _with_context,
)
from .sivi import SIVI_ELBO


def _avb_loss(self, **options: Any) -> AdversarialELBO:
    r"""The objective this guide trains with by default:
    :class:`~condgen.infer.AdversarialELBO` with ``options``."""
    return AdversarialELBO(**options)


def _sivi_loss(self, **options: Any) -> SIVI_ELBO:
    r"""The objective this guide trains with by default: :class:`~condgen.infer.SIVI_ELBO`
    with ``options`` (``num_inner``, ``num_particles``, ``max_plate_nesting``)."""
    return SIVI_ELBO(**options)


class _NoiseGuide(AutoContinuous):
    r"""The common part of the guides over all latent sites driven by noise: the unconstrained
    packing of :class:`~pyro.infer.autoguide.AutoContinuous`, a network built at the first
    call from the model's initial point, and the objective the guide trains with."""

    def __init__(
        self,
        model: Callable,
        noise_dim: int | None,
        hidden: Sequence[int],
        init_loc_fn: Callable,
        init_scale: float,
    ):
        _check_options(noise_dim, hidden, init_scale)
        self.noise_dim, self.hidden, self._init_scale = noise_dim, tuple(hidden), init_scale
        super().__init__(model, init_loc_fn=init_loc_fn)

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        super()._setup_prototype(*args, **kwargs)
        if self.noise_dim is None:
            self.noise_dim = self.latent_dim
        loc = self._init_loc().detach()
        self._like = loc  # the noise's dtype and device
        self._build(loc)

    def _build(self, loc: Tensor) -> None:
        raise NotImplementedError

    def _noise(self, shape: Size) -> Tensor:
        return torch.randn(
            *shape, self.noise_dim, dtype=self._like.dtype, device=self._like.device
        )

    def get_posterior(self, *args: Any, **kwargs: Any) -> _NoiseLatent:
        r"""The guide's distribution of the concatenated unconstrained latent :math:`u`."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        return self._posterior()


class SemiImplicitGuide(_NoiseGuide):
    r"""A semi-implicit guide (SIVI): a Gaussian over all latent sites, concatenated in
    unconstrained space, whose mean and scale are a network of noise,

    .. math:: u \sim \mathcal{N}\big(\mu(\psi), \mathrm{diag}\,\sigma(\psi)^2\big), \quad
        (\mu, \log\sigma)(\psi) = g(\psi), \quad \psi = (\epsilon, c), \;
        \epsilon \sim \mathcal{N}(0, I), \; c \sim \mathcal{U}\{1, \dots, C\},
        \qquad x_s = T_s(u_s),

    with :math:`T_s = ` ``biject_to(support)`` as in
    :class:`~pyro.infer.autoguide.AutoContinuous`. The marginal :math:`q(u)` is an infinite
    mixture of Gaussians: multimodal, skewed and correlated where a Gaussian guide is not, but
    without a closed-form density. Its draws are exact and cheap; its log-density is a Monte
    Carlo estimate (:class:`SemiImplicitLatent`), so it trains with
    :class:`~condgen.infer.SIVI_ELBO` (the default, :meth:`default_loss`) or
    :class:`~condgen.infer.KernelSIVI`. It works with :class:`pyro.infer.Predictive` and
    ``condgen.condition(..., method="svi", guide="semi_implicit")``.

    The discrete part :math:`c` lets the mixing distribution jump: well-separated modes need
    no mass in between. Its ``components`` values enter the network as :math:`\pm` one-hot
    codes, in pairs of opposite signs, so that at initialisation half the components sit on
    each side of the centre. On the two-mode posterior of the tests (modes at
    :math:`\theta_1 = \pm 2`, ``condition``'s SVI defaults), a continuous mixing alone put
    every draw in one mode on 4 seeds of 4; 16 components put 38% to 75% of the mass in the
    positive mode on seeds 0-5, and 32 components 49% to 51%. Once the components have
    settled, the mass of a mode is about a multiple of :math:`1 / C`.

    Arguments:
        model: A Pyro model with continuous latent sites of fixed shapes.
        noise_dim: The dimension of :math:`\epsilon` (default the latent dimension :math:`D`).
        hidden: The hidden layers of :math:`g` (a :class:`MixingNetwork`).
        components: The number :math:`C` of values of the discrete part of :math:`\psi`, even.
        init_loc_fn: A per-site initialisation (``pyro.infer.autoguide.init_to_*``) for the
            centre of :math:`\mu`; by default the prior mean, so that a symmetric posterior
            starts symmetric.
        init_scale: The initial :math:`\sigma`, and the initial spread of :math:`\mu`.
        num_inner: The number of mixing draws of the guide's log-density estimate, where an
            objective does not set it (Pyro's ``Trace_ELBO``, ``Problem.sample_guide``).
        encoder: An encoder of a data plate's observations: then the guide built is an
            :class:`AmortizedSemiImplicitGuide` of the plate's local latents.

    Example:
        >>> import pyro, torch
        >>> import pyro.distributions as dist
        >>> def model(y):
        ...     x = pyro.sample("x", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        ...     pyro.sample("y", dist.Normal(x.sum(-1), 0.5), obs=y)
        >>> y = torch.tensor(1.0)
        >>> from condgen.guides import SemiImplicitGuide
        >>> guide = SemiImplicitGuide(model, noise_dim=4, hidden=(32, 32))
        >>> svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), guide.default_loss())
        >>> for _ in range(20):  # about 2000 steps to converge
        ...     loss = svi.step(y)
        >>> draws = pyro.infer.Predictive(model, guide=guide, num_samples=100)(y)
        >>> draws["x"].shape
        torch.Size([100, 2])

    References:
        | Semi-Implicit Variational Inference (Yin et al., 2018)
        | https://arxiv.org/abs/1805.11183
    """

    def __init__(
        self,
        model: Callable,
        noise_dim: int | None = None,
        hidden: Sequence[int] = (64, 64),
        *,
        components: int = 32,
        init_loc_fn: Callable = init_to_mean,
        init_scale: float = 1.0,
        num_inner: int = 100,
        encoder: None = None,
    ):
        _check_mixing(components, num_inner)
        self.num_inner, self.components = num_inner, components
        super().__init__(model, noise_dim, hidden, init_loc_fn, init_scale)

    def __new__(cls, *args: Any, encoder: Callable | None = None, **kwargs: Any):
        if encoder is not None:  # the amortized form, for local latents in a data plate
            return AmortizedSemiImplicitGuide(args[0], encoder, *args[1:], **kwargs)
        return super().__new__(cls)  # also when unpickled (no arguments)

    def _build(self, loc: Tensor) -> None:
        inputs = self.noise_dim + self.components // 2
        net = MixingNetwork(inputs, self.latent_dim, 0, self.hidden, loc, self._init_scale)
        self.mixing = net.to(device=loc.device, dtype=loc.dtype)

    def _posterior(self) -> SemiImplicitLatent:
        return SemiImplicitLatent(
            lambda shape: self.mixing(
                _mixing_noise(shape, self.noise_dim, self.components, self._like)
            ),
            self.latent_dim,
            num_inner=self.num_inner,
        )

    default_loss = _sivi_loss


class AmortizedSemiImplicitGuide(_AmortizedGuide):
    r"""An amortized semi-implicit guide: the local latents of each datum get a semi-implicit
    posterior whose mixing network also sees a context that an encoder computes from the
    datum's observation.

    With :math:`u_i` the local latents of datum :math:`i` concatenated in unconstrained space
    and :math:`c_i = \mathrm{encoder}(x_i)`,

    .. math:: u_i \sim \mathcal{N}\big(\mu(\psi_i, c_i), \mathrm{diag}\,\sigma(\psi_i,
        c_i)^2\big), \qquad \psi_i = (\epsilon_i, k_i) \text{ as in }
        :class:`SemiImplicitGuide`,

    an implicit encoder: :math:`q(u_i \mid x_i)` is an infinite mixture, trained with
    :class:`~condgen.infer.SIVI_ELBO` (:meth:`default_loss`). The global latents get a
    non-amortized guide (:class:`~pyro.infer.autoguide.AutoNormal` by default). The model
    contract (data plate, observations, subsampling with ``pyro.plate(...,
    subsample_size=...)``) is :class:`~condgen.guides.AmortizedNormal`'s; the encoder returns
    the context, ``[B, C]``. ``SemiImplicitGuide(model, ..., encoder=encoder)`` builds one.

    Arguments:
        model: A Pyro model.
        encoder: A callable (an ``nn.Module`` to train it) from observation batches to a
            context ``[B, C]``.
        noise_dim: The dimension of :math:`\epsilon` (default the local dimension).
        hidden: The hidden layers of the mixing network.
        components: The number of values of the discrete part of :math:`\psi`.
        local: The local sites (default every latent site inside the data plate).
        plate: The data plate's name (default: found).
        data: Observations by site name, full size, applied with :func:`pyro.condition`.
        observations: A function of the model's arguments returning the encoder's input.
        global_guide: A function from a model (the global part) to a guide.
        init_loc_fn: The initialisation of the local centre and of the global guide.
        init_scale: The initial :math:`\sigma` and spread of :math:`\mu`.
        num_inner: The number of mixing draws of the log-density estimate, where an objective
            does not set it.

    Example:
        >>> import pyro, torch
        >>> import pyro.distributions as dist
        >>> decoder = torch.nn.Linear(4, 16)
        >>> images = torch.bernoulli(torch.full((200, 16), 0.3))  # 200 binary "images"
        >>> def model(x, batch_size=None):
        ...     pyro.module("decoder", decoder)
        ...     with pyro.plate("data", len(x), subsample_size=batch_size) as ind:
        ...         z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([4]).to_event(1))
        ...         pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x[ind])
        >>> from condgen.guides import AmortizedSemiImplicitGuide, SemiImplicitGuide
        >>> from condgen.infer import SIVI_ELBO
        >>> from pyro.infer import SVI
        >>> encoder = torch.nn.Linear(16, 8)  # x [B, 16] -> context [B, 8]
        >>> guide = SemiImplicitGuide(model, noise_dim=4, encoder=encoder)
        >>> isinstance(guide, AmortizedSemiImplicitGuide)
        True
        >>> svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), SIVI_ELBO(num_particles=1))
        >>> loss = svi.step(images, batch_size=100)

    References:
        | Semi-Implicit Variational Inference (Yin et al., 2018)
        | https://arxiv.org/abs/1805.11183
    """

    def __init__(
        self,
        model: Callable,
        encoder: Callable,
        noise_dim: int | None = None,
        hidden: Sequence[int] = (64, 64),
        *,
        components: int = 32,
        local: Sequence[str] | None = None,
        plate: str | None = None,
        data: Mapping[str, Tensor] | None = None,
        observations: Callable[..., Tensor | Sequence[Tensor]] | None = None,
        global_guide: Callable[[Callable], Callable] | None = None,
        init_loc_fn: Callable = init_to_mean,
        init_scale: float = 1.0,
        num_inner: int = 100,
    ):
        _check_options(noise_dim, hidden, init_scale)
        _check_mixing(components, num_inner)
        self.noise_dim, self.hidden, self._init_scale = noise_dim, tuple(hidden), init_scale
        self.components, self.num_inner = components, num_inner
        super().__init__(
            model,
            encoder,
            local=local,
            plate=plate,
            data=data,
            observations=observations,
            global_guide=global_guide,
            init_loc_fn=init_loc_fn,
        )

    def _setup_local(self, *batch: Tensor) -> None:
        if self.noise_dim is None:
            self.noise_dim = self.local_dim
        init = self._local_init.detach()
        net = MixingNetwork(
            self.noise_dim + self.components // 2,
            self.local_dim,
            self._context_size(*batch),
            self.hidden,
            init.cpu(),
            self._init_scale,
        )
        self.mixing = net.to(device=init.device, dtype=init.dtype)
        super()._setup_local(*batch)

    def _local_posterior(self, *batch: Tensor, inner: int = 0) -> SemiImplicitLatent:
        context = _datum_major(self.encoder(*batch), inner)
        base = context.shape[:-1]

        def mixing(shape: Size) -> tuple[Tensor, Tensor]:
            noise = _mixing_noise(Size(shape) + base, self.noise_dim, self.components, context)
            return self.mixing(noise, context)

        return SemiImplicitLatent(mixing, self.local_dim, base, num_inner=self.num_inner)

    default_loss = _sivi_loss


class ImplicitGuide(_NoiseGuide):
    r"""An implicit guide: a generator network of noise over all latent sites, concatenated in
    unconstrained space,

    .. math:: u = G(\epsilon), \quad \epsilon \sim \mathcal{N}(0, I), \qquad x_s = T_s(u_s),

    with :math:`T_s = ` ``biject_to(support)``. The law of :math:`u` has no tractable density
    (:class:`ImplicitLatent`): the guide trains with :class:`~condgen.infer.AdversarialELBO`
    (its :meth:`default_loss`), which estimates :math:`\log q - \log p` with a discriminator.
    Prefer :class:`SemiImplicitGuide` unless the generator must be free-form: its density
    estimate needs no adversarial game.

    Arguments:
        model: A Pyro model with continuous latent sites of fixed shapes.
        generator: A module from noise ``[..., noise_dim]`` to ``[..., D]``; by default an MLP
            with ``hidden`` layers whose output starts at the model's initial point with a
            spread of about ``init_scale``.
        noise_dim: The dimension of :math:`\epsilon`, at least :math:`D` (default :math:`D`).
            Required with a ``generator``.
        hidden: The hidden layers of the default generator.
        init_loc_fn: A per-site initialisation for the default generator's centre.
        init_scale: The default generator's initial spread.
        encoder: An encoder of a data plate's observations: then the guide built is an
            :class:`AmortizedImplicitGuide` of the plate's local latents.

    Example:
        >>> import pyro, torch
        >>> import pyro.distributions as dist
        >>> def model(y):
        ...     x = pyro.sample("x", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        ...     pyro.sample("y", dist.Normal(x.sum(-1), 0.5), obs=y)
        >>> y = torch.tensor(1.0)
        >>> from condgen.guides import ImplicitGuide
        >>> guide = ImplicitGuide(model, noise_dim=4)
        >>> svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), guide.default_loss())
        >>> loss = svi.step(y)
        >>> guide(y)["x"].shape
        torch.Size([2])

    References:
        | Adversarial Variational Bayes (Mescheder et al., 2017)
        | https://arxiv.org/abs/1701.04722
    """

    def __init__(
        self,
        model: Callable,
        generator: nn.Module | None = None,
        noise_dim: int | None = None,
        hidden: Sequence[int] = (64, 64),
        *,
        init_loc_fn: Callable = init_to_median,
        init_scale: float = 0.1,
        encoder: None = None,
    ):
        _check_generator(generator, noise_dim)
        super().__init__(model, noise_dim, hidden, init_loc_fn, init_scale)
        self.generator = generator

    def __new__(cls, *args: Any, encoder: Callable | None = None, **kwargs: Any):
        if encoder is not None:  # the amortized form, for local latents in a data plate
            return AmortizedImplicitGuide(args[0], encoder, *args[1:], **kwargs)
        return super().__new__(cls)  # also when unpickled (no arguments)

    def _build(self, loc: Tensor) -> None:
        self.generator = _generator(self, self.latent_dim, 0, loc)

    def _posterior(self) -> ImplicitLatent:
        return ImplicitLatent(lambda shape: self.generator(self._noise(shape)), self.latent_dim)

    default_loss = _avb_loss


class AmortizedImplicitGuide(_AmortizedGuide):
    r"""An amortized implicit guide: the local latents of each datum are drawn by a generator
    of noise and of a context that an encoder computes from the datum's observation,
    :math:`u_i = G(\epsilon_i, c_i)`, :math:`c_i = \mathrm{encoder}(x_i)`, without a density.

    It trains with :class:`~condgen.infer.AdversarialELBO` (:meth:`default_loss`), whose
    discriminator then sees each datum's context beside its standardised draws, and whose
    moment-matched contrast is per datum (over the particles, so use several). The global
    latents get a non-amortized guide (:class:`~pyro.infer.autoguide.AutoNormal` by default),
    whose density is exact. The model contract (data plate, observations, subsampling) is
    :class:`~condgen.guides.AmortizedNormal`'s; the encoder returns the context, ``[B, C]``.
    ``ImplicitGuide(model, ..., encoder=encoder)`` builds one.

    Arguments:
        model: A Pyro model.
        encoder: A callable (an ``nn.Module`` to train it) from observation batches to a
            context ``[B, C]``.
        generator: A module from ``[..., noise_dim + C]`` (noise, then context) to
            ``[..., D]``; by default an MLP with ``hidden`` layers.
        noise_dim: The dimension of :math:`\epsilon`, at least the local dimension :math:`D`
            (its default). Required with a ``generator``.
        hidden: The hidden layers of the default generator.
        local: The local sites (default every latent site inside the data plate).
        plate: The data plate's name (default: found).
        data: Observations by site name, full size, applied with :func:`pyro.condition`.
        observations: A function of the model's arguments returning the encoder's input.
        global_guide: A function from a model (the global part) to a guide.
        init_loc_fn: The initialisation of the default generator's centre and of the global
            guide.
        init_scale: The default generator's initial spread.

    Example:
        >>> import pyro, torch
        >>> import pyro.distributions as dist
        >>> decoder = torch.nn.Linear(4, 16)
        >>> images = torch.bernoulli(torch.full((200, 16), 0.3))  # 200 binary "images"
        >>> def model(x, batch_size=None):
        ...     pyro.module("decoder", decoder)
        ...     with pyro.plate("data", len(x), subsample_size=batch_size) as ind:
        ...         z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([4]).to_event(1))
        ...         pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x[ind])
        >>> from condgen.guides import AmortizedImplicitGuide, ImplicitGuide
        >>> from pyro.infer import SVI
        >>> encoder = torch.nn.Linear(16, 8)  # x [B, 16] -> context [B, 8]
        >>> guide = ImplicitGuide(model, encoder=encoder)
        >>> isinstance(guide, AmortizedImplicitGuide)
        True
        >>> svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), guide.default_loss())
        >>> loss = svi.step(images, batch_size=100)

    References:
        | Adversarial Variational Bayes (Mescheder et al., 2017)
        | https://arxiv.org/abs/1701.04722
    """

    def __init__(
        self,
        model: Callable,
        encoder: Callable,
        generator: nn.Module | None = None,
        noise_dim: int | None = None,
        hidden: Sequence[int] = (64, 64),
        *,
        local: Sequence[str] | None = None,
        plate: str | None = None,
        data: Mapping[str, Tensor] | None = None,
        observations: Callable[..., Tensor | Sequence[Tensor]] | None = None,
        global_guide: Callable[[Callable], Callable] | None = None,
        init_loc_fn: Callable = init_to_median,
        init_scale: float = 0.1,
    ):
        _check_options(noise_dim, hidden, init_scale)
        _check_generator(generator, noise_dim)
        self.noise_dim, self.hidden, self._init_scale = noise_dim, tuple(hidden), init_scale
        self.generator = generator
        super().__init__(
            model,
            encoder,
            local=local,
            plate=plate,
            data=data,
            observations=observations,
            global_guide=global_guide,
            init_loc_fn=init_loc_fn,
        )

    def _setup_local(self, *batch: Tensor) -> None:
        if self.noise_dim is None:
            self.noise_dim = self.local_dim
        context = self._context_size(*batch)
        self.generator = _generator(self, self.local_dim, context, self._local_init.detach())
        super()._setup_local(*batch)

    def _local_posterior(self, *batch: Tensor, inner: int = 0) -> ImplicitLatent:
        context = _datum_major(self.encoder(*batch), inner)
        base = context.shape[:-1]

        def draw(shape: Size) -> Tensor:
            noise = torch.randn(
                *shape, *base, self.noise_dim, dtype=context.dtype, device=context.device
            )
            return self.generator(_with_context(noise, context))

        return ImplicitLatent(draw, self.local_dim, base, context=context)

    default_loss = _avb_loss


def _generator(guide: Any, features: int, context: int, loc: Tensor) -> nn.Module:
    r"""The guide's generator, checked, or its default MLP from noise and context."""
    if guide.noise_dim < features:
        raise ValueError(
            f"noise_dim ({guide.noise_dim}) must be at least the latent dimension "
            f"({features}): a generator of fewer noise dimensions has no density"
        )
    if guide.generator is not None:
        return guide.generator
    inputs = guide.noise_dim + context
    net = _network(inputs, features, guide.hidden, loc.cpu(), guide._init_scale, 1)
    return net.to(device=loc.device, dtype=loc.dtype)


def _check_generator(generator: Any, noise_dim: int | None) -> None:
    if generator is not None and not callable(generator):
        raise ValueError(f"generator must be a module or callable, got {generator!r}")
    if generator is not None and noise_dim is None:
        raise ValueError("noise_dim is required with a generator: its input dimension")


def _check_mixing(components: int, num_inner: int) -> None:
    if not (isinstance(components, int) and components >= 2 and components % 2 == 0):
        raise ValueError(f"components must be a positive even integer, got {components!r}")
    if not (isinstance(num_inner, int) and num_inner >= 1):
        raise ValueError(f"num_inner must be a positive integer, got {num_inner!r}")


def _check_options(noise_dim: int | None, hidden: Sequence[int], init_scale: float) -> None:
    if noise_dim is not None and not (isinstance(noise_dim, int) and noise_dim >= 1):
        raise ValueError(f"noise_dim must be a positive integer or None, got {noise_dim!r}")
    if not all(isinstance(h, int) and h >= 1 for h in hidden):
        raise ValueError(f"hidden must be a sequence of positive integers, got {hidden!r}")
    if not init_scale > 0:
        raise ValueError(f"init_scale must be positive, got {init_scale!r}")
