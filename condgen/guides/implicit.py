r"""Implicit guides: latents pushed forward from noise through a generator, without a
density."""

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

from collections.abc import Callable, Sequence
from typing import Any

import torch
from pyro.infer.autoguide.initialization import init_to_median
from torch import Size, Tensor, nn

from .avb import AdversarialELBO
from .latents import ImplicitLatent, MixingNetwork, SemiImplicitLatent, _network, _with_context
from .noise import _AmortizedNoiseGuide, _noise_dim, _NoiseGuide
from .semi_implicit import AmortizedSemiImplicitGuide, SemiImplicitGuide


def _avb_loss(self: Any, **options: Any) -> AdversarialELBO:
    r"""The objective this guide trains with by default:
    :class:`~condgen.infer.AdversarialELBO` with ``options``."""
    return AdversarialELBO(**options)


class AmortizedImplicitGuide(_AmortizedNoiseGuide):
    r"""An amortized implicit guide: the local latents of each datum are drawn by a generator
    of noise and of a context that an encoder computes from the datum's observation,
    :math:`u_i = G(\epsilon_i, c_i)`, :math:`c_i = \mathrm{encoder}(x_i)`, without a density.

    It trains with :class:`~condgen.infer.AdversarialELBO` (:meth:`default_loss`), whose
    discriminator then sees each datum's context beside its standardised draws, and whose
    moment-matched contrast is per datum (over the particles, so use several). The global
    latents get a non-amortized guide (:class:`~pyro.infer.autoguide.AutoNormal` by default),
    whose density is exact. The model contract (data plate, observations, subsampling) is
    :class:`~condgen.guides.AmortizedNormal`'s; the encoder returns the context, ``[B, C]``.

    Arguments:
        model: A Pyro model.
        encoder: A callable (an ``nn.Module`` to train it) from observation batches to a
            context ``[B, C]``.
        generator: A module from ``[..., noise_dim + C]`` (noise, then context) to
            ``[..., D]``; by default an MLP with ``hidden`` layers.
        noise_dim: The dimension of :math:`\epsilon`, at least the local dimension :math:`D`
            (its default). Required with a ``generator``.
        hidden: The hidden layers of the default generator.
        init_loc_fn: The initialisation of the default generator's centre and of the global
            guide.
        init_scale: The default generator's initial spread.
        options: The data plate's options of :class:`~condgen.guides.AmortizedNormal`
            (``local``, ``plate``, ``data``, ``observations``, ``global_guide``).

    Example:
        >>> import pyro, torch
        >>> import pyro.distributions as dist
        >>> lengths = 1.0 + 4.0 * torch.rand(100)  # 100 lengths, each the sum of two parts
        >>> def model(x):  # the two positive parts z of each length
        ...     with pyro.plate("data", len(x)):
        ...         z = pyro.sample("z", dist.Exponential(1.0).expand([2]).to_event(1))
        ...         pyro.sample("x", dist.Normal(z.sum(-1), 0.1), obs=x)
        >>> from condgen.guides import AmortizedImplicitGuide
        >>> encoder = torch.nn.Linear(1, 8)  # x [B, 1] -> context [B, 8]
        >>> guide = AmortizedImplicitGuide(model, encoder, observations=lambda x: x[:, None])
        >>> optim = pyro.optim.Adam({"lr": 1e-3})
        >>> svi = pyro.infer.SVI(model, guide, optim, guide.default_loss())
        >>> loss = svi.step(lengths)
        >>> bool((guide(lengths)["z"] > 0).all())  # drawn on the positive support
        True

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
        init_loc_fn: Callable = init_to_median,
        init_scale: float = 0.1,
        **options: Any,
    ):
        _check_generator(generator, noise_dim)
        super().__init__(model, encoder, noise_dim, hidden, init_loc_fn, init_scale, **options)
        self.generator = generator

    def _build(self, loc: Tensor, context: int) -> None:
        self.generator = _generator(self, self.local_dim, context, loc)

    def _posterior(self, context: Tensor) -> ImplicitLatent:
        base = context.shape[:-1]

        def draw(shape: Size) -> Tensor:
            noise = torch.randn(
                *shape, *base, self.noise_dim, dtype=context.dtype, device=context.device
            )
            return self.generator(_with_context(noise, context))

        return ImplicitLatent(draw, self.local_dim, base, context=context)

    default_loss = _avb_loss


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
        encoder: Not taken, nor the options of a data plate (``options``): a guide of the
            local latents of a data plate, amortized by an encoder of their observations, is an
            :class:`AmortizedImplicitGuide`, which the :class:`ValueError` raised for them names.

    Example:
        >>> import condgen, pyro
        >>> task = condgen.evaluate.Funnel()  # Neal's funnel: sites "v" (log scale) and "x"
        >>> guide = condgen.guides.ImplicitGuide(task.model, noise_dim=4)
        >>> optim = pyro.optim.Adam({"lr": 1e-3})
        >>> svi = pyro.infer.SVI(task.model, guide, optim, guide.default_loss())
        >>> loss = svi.step()
        >>> sorted(guide())
        ['v', 'x']

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
        encoder: Callable | None = None,
        **options: Any,
    ):
        _check_generator(generator, noise_dim)
        super().__init__(model, noise_dim, hidden, init_loc_fn, init_scale, encoder, options)
        self.generator = generator

    _amortized = AmortizedImplicitGuide

    def _build(self, loc: Tensor) -> None:
        self.generator = _generator(self, self.latent_dim, 0, loc)

    def _posterior(self) -> ImplicitLatent:
        return ImplicitLatent(lambda shape: self.generator(self._noise(shape)), self.latent_dim)

    default_loss = _avb_loss


def _generator(guide: Any, features: int, context: int, loc: Tensor) -> nn.Module:
    r"""The guide's generator, checked, or its default MLP from noise and context."""
    noise_dim = _noise_dim(guide, features)
    if noise_dim < features:
        raise ValueError(
            f"noise_dim ({noise_dim}) must be at least the latent dimension "
            f"({features}): a generator of fewer noise dimensions has no density"
        )
    if guide.generator is not None:
        return guide.generator
    net = _network(noise_dim + context, features, guide.hidden, loc.cpu(), guide._init_scale, 1)
    return net.to(device=loc.device, dtype=loc.dtype)


def _check_generator(generator: Any, noise_dim: int | None) -> None:
    if generator is not None and not callable(generator):
        raise ValueError(f"generator must be a module or callable, got {generator!r}")
    if generator is not None and noise_dim is None:
        raise ValueError("noise_dim is required with a generator: its input dimension")
