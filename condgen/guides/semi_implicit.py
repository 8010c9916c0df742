r"""Semi-implicit guides: a Gaussian whose parameters are a network of noise."""

from __future__ import annotations

__all__ = ["AmortizedSemiImplicitGuide", "SemiImplicitGuide"]

from collections.abc import Callable, Sequence
from typing import Any

from pyro.infer.autoguide.initialization import init_to_mean
from torch import Size, Tensor, nn

from .latents import MixingNetwork, SemiImplicitLatent, _mixing_noise
from .noise import _AmortizedNoiseGuide, _noise_dim, _NoiseGuide
from .sivi import SIVI_ELBO


def _sivi_loss(self: Any, **options: Any) -> SIVI_ELBO:
    r"""The objective this guide trains with by default: :class:`~condgen.infer.SIVI_ELBO`
    with ``options`` (``num_inner``, ``num_particles``, ``max_plate_nesting``)."""
    return SIVI_ELBO(**options)


class AmortizedSemiImplicitGuide(_AmortizedNoiseGuide):
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
    the context, ``[B, C]``.

    Arguments:
        model: A Pyro model.
        encoder: A callable (an ``nn.Module`` to train it) from observation batches to a
            context ``[B, C]``.
        noise_dim: The dimension of :math:`\epsilon` (default the local dimension).
        hidden: The hidden layers of the mixing network.
        components: The number of values of the discrete part of :math:`\psi`.
        init_loc_fn: The initialisation of the local centre and of the global guide.
        init_scale: The initial :math:`\sigma` and spread of :math:`\mu`.
        num_inner: The number of mixing draws of the log-density estimate, where an objective
            does not set it.
        options: The data plate's options of :class:`~condgen.guides.AmortizedNormal`
            (``local``, ``plate``, ``data``, ``observations``, ``global_guide``).

    Example:
        >>> import pyro, torch
        >>> import pyro.distributions as dist
        >>> scores = torch.randn(300, 3)  # 300 students' scores in 3 tests
        >>> def model():  # each student's ability z explains their scores
        ...     with pyro.plate("students", 300):
        ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...         pyro.sample("x", dist.Normal(z[..., None] * torch.ones(3), 1.0).to_event(1))
        >>> from condgen.guides import AmortizedSemiImplicitGuide
        >>> from condgen.guides.sivi import SIVI_ELBO
        >>> encoder = torch.nn.Linear(3, 8)  # x [B, 3] -> context [B, 8]
        >>> guide = AmortizedSemiImplicitGuide(model, encoder, noise_dim=4, data={"x": scores})
        >>> conditioned = pyro.condition(model, data={"x": scores})
        >>> optim = pyro.optim.Adam({"lr": 1e-3})
        >>> svi = pyro.infer.SVI(conditioned, guide, optim, SIVI_ELBO(num_particles=1))
        >>> loss = svi.step()
        >>> guide()["z"].shape  # a draw of every student's ability
        torch.Size([300])

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
        init_loc_fn: Callable = init_to_mean,
        init_scale: float = 1.0,
        num_inner: int = 100,
        **options: Any,
    ):
        _set_mixing_options(self, components, num_inner)
        super().__init__(model, encoder, noise_dim, hidden, init_loc_fn, init_scale, **options)

    def _build(self, loc: Tensor, context: int) -> None:
        self.mixing = _mixing_network(self, self.local_dim, context, loc)

    def _posterior(self, context: Tensor) -> SemiImplicitLatent:
        base = context.shape[:-1]

        def mixing(shape: Size) -> tuple[Tensor, Tensor]:
            noise = _mixing_noise(Size(shape) + base, self.noise_dim, self.components, context)
            return self.mixing(noise, context)

        return SemiImplicitLatent(mixing, self.local_dim, base, num_inner=self.num_inner)

    default_loss = _sivi_loss


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
    each side of the centre; once the components have settled, the mass of a mode is about a
    multiple of :math:`1 / C`, and which multiple varies between runs: separated modes are
    usually, not always, kept in balance (measured mode masses over seeds: ``docs/implicit.md``).

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
        encoder: Not taken, nor the options of a data plate (``options``): a guide of the
            local latents of a data plate, amortized by an encoder of their observations, is an
            :class:`AmortizedSemiImplicitGuide`, which the :class:`ValueError` raised for them
            names.

    Example:
        >>> import pyro
        >>> from condgen.evaluate import TwoModes
        >>> from condgen.guides import SemiImplicitGuide
        >>> task = TwoModes()  # a posterior with two separated modes, theta_1 = +-2
        >>> guide = SemiImplicitGuide(task.model, noise_dim=4, hidden=(32, 32))
        >>> optim = pyro.optim.Adam({"lr": 1e-3})
        >>> svi = pyro.infer.SVI(task.model, guide, optim, guide.default_loss())
        >>> for _ in range(20):  # about 2000 steps to converge
        ...     loss = svi.step()
        >>> pyro.infer.Predictive(task.model, guide=guide, num_samples=100)()["theta"].shape
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
        encoder: Callable | None = None,
        **options: Any,
    ):
        _set_mixing_options(self, components, num_inner)
        super().__init__(model, noise_dim, hidden, init_loc_fn, init_scale, encoder, options)

    _amortized = AmortizedSemiImplicitGuide

    def _build(self, loc: Tensor) -> None:
        self.mixing = _mixing_network(self, self.latent_dim, 0, loc)

    def _posterior(self) -> SemiImplicitLatent:
        return SemiImplicitLatent(
            lambda shape: self.mixing(
                _mixing_noise(shape, self.noise_dim, self.components, self._like)
            ),
            self.latent_dim,
            num_inner=self.num_inner,
        )

    default_loss = _sivi_loss


def _set_mixing_options(guide: Any, components: int, num_inner: int) -> None:
    if not (isinstance(components, int) and components >= 2 and components % 2 == 0):
        raise ValueError(f"components must be a positive even integer, got {components!r}")
    if not (isinstance(num_inner, int) and num_inner >= 1):
        raise ValueError(f"num_inner must be a positive integer, got {num_inner!r}")
    guide.components, guide.num_inner = components, num_inner


def _mixing_network(guide: Any, features: int, context: int, loc: Tensor) -> nn.Module:
    r"""The guide's :class:`MixingNetwork` from its mixing variable (and a context of size
    ``context``) to a Gaussian over :math:`\mathbb{R}^{features}`, centred at ``loc``."""
    inputs = _noise_dim(guide, features) + guide.components // 2
    net = MixingNetwork(inputs, features, context, guide.hidden, loc.cpu(), guide._init_scale)
    return net.to(device=loc.device, dtype=loc.dtype)
