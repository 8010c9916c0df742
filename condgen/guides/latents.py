r"""The distributions of semi-implicit and implicit guides: latents pushed forward from noise
through networks, with the networks that push them (shared by the guides and their objectives)."""

from __future__ import annotations

__all__ = ["ImplicitLatent", "MixingNetwork", "SemiImplicitLatent"]

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Size, Tensor, nn
from torch.distributions import constraints
from zuko.nn import MLP

_COMPONENT_SCALE = 3.0
r"""The length of a semi-implicit guide's component codes: at this length the components start
about as far apart as the guide is wide (with one-hot codes of length 1 they started together
and, on separated modes, all followed one mode on 3 seeds of 4)."""

Mixing = Callable[[Size], tuple[Tensor, Tensor]]
r"""A function from a sample shape ``S`` to ``(loc, scale)``, each ``[*S, *batch, D]``: the
Gaussian layer's parameters at ``S`` independent draws of the mixing variable."""


class _NoiseLatent(TorchDistribution):
    r"""The common part of :class:`SemiImplicitLatent` and :class:`ImplicitLatent`: a
    distribution over :math:`\mathbb{R}^D` drawn by a function of fresh noise, with Pyro's
    batching (the function's own batch shape ``base_batch`` sits to the right)."""

    arg_constraints: ClassVar[dict] = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, draw: Callable, features: int, base_batch: Size, batch_shape: Size):
        self.draw, self.features, self.base_batch = draw, features, Size(base_batch)
        torch.broadcast_shapes(self.base_batch, batch_shape)
        super().__init__(Size(batch_shape), Size([features]), validate_args=False)

    def _shape(self, sample_shape: Size) -> Size:
        extra = len(self.batch_shape) - len(self.base_batch)
        return Size(sample_shape) + self.batch_shape[:extra]


class SemiImplicitLatent(_NoiseLatent):
    r"""A semi-implicit distribution over :math:`\mathbb{R}^D`: a Gaussian whose parameters are
    random,

    .. math:: u \sim \mathcal{N}\big(\mu(\psi), \mathrm{diag}\,\sigma(\psi)^2\big), \qquad
        \psi \sim q(\psi),

    so that :math:`q(u) = \mathbb{E}_\psi[\mathcal{N}(u \mid \mu(\psi), \sigma(\psi)^2)]` has no
    closed form. Its log-density is the Monte Carlo estimate of Yin and Zhou (2018), with
    :math:`K` fresh mixing draws :math:`\psi_1, \dots, \psi_K`, and, for the distribution's own
    draws, the :math:`\psi_0` that drew :math:`u`:

    .. math:: \log \hat q_K(u) = \log \frac{1}{K + 1} \sum_{k=0}^K
        \mathcal{N}\big(u \mid \mu(\psi_k), \sigma(\psi_k)^2\big).

    It is consistent as :math:`K \to \infty`; for finite :math:`K` its expectation is above
    :math:`\log q(u)` at the distribution's own draws (see :class:`~condgen.infer.SIVI_ELBO`).

    Arguments:
        mixing: A function from a sample shape to the Gaussian layer's ``(loc, scale)`` at that
            many independent mixing draws (see :data:`Mixing`).
        features: The dimension :math:`D`.
        base_batch: The batch shape of ``mixing``'s outputs (e.g. ``[B, 1]`` per datum).
        batch_shape: The batch shape (default ``base_batch``).
        num_inner: The number :math:`K` of mixing draws of :meth:`log_prob`.
    """

    def __init__(
        self,
        mixing: Mixing,
        features: int,
        base_batch: tuple[int, ...] = (),
        batch_shape: Size | None = None,
        num_inner: int = 100,
    ):
        super().__init__(
            mixing, features, base_batch, base_batch if batch_shape is None else batch_shape
        )
        self.num_inner = num_inner
        self._cache: tuple[Tensor, Tensor, Tensor] | None = None

    def expand(self, batch_shape: Size, _instance: Any = None) -> SemiImplicitLatent:
        return SemiImplicitLatent(
            self.draw, self.features, self.base_batch, batch_shape, self.num_inner
        )

    def rsample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        loc, scale = self.draw(self._shape(sample_shape))
        value = loc + scale * torch.randn_like(loc)
        self._cache = (value, loc, scale)
        return value

    def _own(self, value: Tensor) -> tuple[Tensor, Tensor] | None:
        if self._cache is not None and value is self._cache[0]:
            return self._cache[1:]
        return None

    def log_prob(self, value: Tensor, num_inner: int | None = None) -> Tensor:
        r"""The estimate :math:`\log \hat q_K(u)`, differentiable in the value and in the
        networks' parameters.

        Arguments:
            value: Values shaped ``[*sample, *batch, D]``.
            num_inner: The number :math:`K` of fresh mixing draws (default the distribution's).
        """
        num_inner = self.num_inner if num_inner is None else num_inner
        loc, scale = self.draw(Size([num_inner]))
        extra = value.dim() - loc.dim() + 1  # aligns the inner draws to the value's left
        loc = loc.reshape(num_inner, *(1,) * extra, *loc.shape[1:])
        scale = scale.reshape(num_inner, *(1,) * extra, *scale.shape[1:])
        terms = _normal_log_prob(value, loc, scale)
        own = self._own(value)
        if own is not None:
            terms = torch.cat((_normal_log_prob(value, *own).unsqueeze(0), terms))
        return torch.logsumexp(terms, 0) - math.log(len(terms))

    def conditional_score(self, value: Tensor) -> Tensor:
        r"""The score of the Gaussian layer, :math:`\nabla_u \log \mathcal{N}(u \mid \mu(\psi_0),
        \sigma(\psi_0)^2) = -(u - \mu(\psi_0)) / \sigma(\psi_0)^2`, at the distribution's own
        draw ``value`` (the conditional score of Cheng et al., 2024)."""
        own = self._own(value)
        if own is None:
            raise ValueError("conditional_score needs a value drawn by this distribution")
        loc, scale = own
        return (loc - value) / scale**2


class ImplicitLatent(_NoiseLatent):
    r"""An implicit distribution over :math:`\mathbb{R}^D`: :math:`u = G(\epsilon)`, drawn by a
    generator of noise, without a tractable density.

    :meth:`log_prob` returns NaN, the value "unknown", so that code which records the
    log-density of draws (e.g. :meth:`condgen.Problem.sample_guide`) runs; Pyro's ELBOs, which
    call :meth:`score_parts`, raise instead. Train with :class:`~condgen.infer.AdversarialELBO`.

    Arguments:
        generator: A function from a sample shape ``S`` to draws ``[*S, *batch, D]``.
        features: The dimension :math:`D`.
        base_batch: The batch shape of the generator's draws.
        batch_shape: The batch shape (default ``base_batch``).
        context: The context the generator draws given, ``[*base_batch, C]`` (an amortized
            guide's encoding of each datum), for a discriminator to see.
    """

    def __init__(
        self,
        generator: Callable[[Size], Tensor],
        features: int,
        base_batch: tuple[int, ...] = (),
        batch_shape: Size | None = None,
        context: Tensor | None = None,
    ):
        super().__init__(
            generator, features, base_batch, base_batch if batch_shape is None else batch_shape
        )
        self.context = context

    def expand(self, batch_shape: Size, _instance: Any = None) -> ImplicitLatent:
        return ImplicitLatent(self.draw, self.features, self.base_batch, batch_shape, self.context)

    def rsample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        return self.draw(self._shape(sample_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        shape = value.shape[: value.dim() - 1]
        return torch.full(shape, math.nan, dtype=value.dtype, device=value.device)

    def score_parts(self, value: Tensor, *args: Any, **kwargs: Any):
        raise NotImplementedError(
            "an implicit guide has no tractable density, so Pyro's ELBOs cannot train it; "
            "use loss=condgen.infer.AdversarialELBO()"
        )


def _normal_log_prob(value: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    z = (value - loc) / scale
    return -(0.5 * z**2 + scale.log()).sum(-1) - 0.5 * value.shape[-1] * math.log(2 * math.pi)


def _network(
    inputs: int, features: int, hidden: Sequence[int], loc: Tensor, scale: float, heads: int
) -> MLP:
    r"""An MLP from ``inputs`` to ``heads * features`` whose first head starts at ``loc`` with a
    spread of ``scale`` over standard-normal inputs (its last-layer rows rescaled on a probe
    batch), and whose second head (a log scale) starts at :math:`\log` ``scale``."""
    net = MLP(inputs, heads * features, hidden, activation=nn.SiLU)
    last = net[-1]
    generator = torch.Generator().manual_seed(0)  # leaves the global generator alone
    probe = torch.randn(1024, inputs, generator=generator)
    with torch.no_grad():
        last.weight[features:] = 0.0
        last.bias.zero_()
        out = net(probe)[:, :features]
        last.weight[:features] *= (scale / out.std(0).clamp_min(1e-6)).unsqueeze(-1)
        shift = loc - out.mean(0) * scale / out.std(0).clamp_min(1e-6)
        bias = torch.cat((shift, torch.full_like(loc, math.log(scale))))
        last.bias.copy_(bias[: heads * features])
    return net


class MixingNetwork(nn.Module):
    r"""The network of a semi-implicit guide: noise :math:`\epsilon` (and a context :math:`c`)
    to the Gaussian layer's parameters, :math:`(\mu, \log \sigma) = g(\epsilon, c)`.

    At initialisation :math:`\mu(\epsilon)` has mean about ``loc`` and standard deviation
    ``scale`` in each coordinate, and :math:`\sigma = ` ``scale``: the guide starts about
    :math:`\sqrt 2` ``scale`` wide.

    Arguments:
        noise_dim: The dimension of :math:`\epsilon`.
        features: The dimension :math:`D` of the latent.
        context: The number of context features (0 without context).
        hidden: The hidden layers' widths.
        loc: The initial centre, shaped :math:`(D,)` (default zero).
        scale: The initial scale.
    """

    def __init__(
        self,
        noise_dim: int,
        features: int,
        context: int = 0,
        hidden: Sequence[int] = (64, 64),
        loc: Tensor | None = None,
        scale: float = 1.0,
    ):
        super().__init__()
        loc = torch.zeros(features) if loc is None else torch.as_tensor(loc).reshape(features)
        self.net = _network(noise_dim + context, features, hidden, loc, scale, heads=2)

    def forward(self, noise: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        loc, log_scale = self.net(_with_context(noise, context)).chunk(2, -1)
        return loc, log_scale.exp()


def _with_context(noise: Tensor, context: Tensor | None) -> Tensor:
    r"""Noise ``[*S, *batch, E]`` and a context ``[*batch, C]`` side by side."""
    if context is None:
        return noise
    return torch.cat((noise, context.expand(*noise.shape[:-1], context.shape[-1])), -1)


def _mixing_noise(shape: Size, noise_dim: int, components: int, like: Tensor) -> Tensor:
    r"""Draws of a semi-implicit guide's mixing variable :math:`\psi = (\epsilon, c)`:
    ``[*shape, noise_dim + components // 2]``: :math:`c` enters as :math:`\pm` a one-hot code
    of length :data:`_COMPONENT_SCALE`, components :math:`k` and :math:`k + C / 2` with
    opposite signs, so that at initialisation they sit on opposite sides of the centre."""
    noise = torch.randn(*shape, noise_dim, dtype=like.dtype, device=like.device)
    c = torch.randint(components, tuple(shape), device=like.device)
    half = components // 2
    sign = 1 - 2 * (c >= half).to(noise)
    code = nn.functional.one_hot(c % half, half).to(noise) * sign.unsqueeze(-1)
    return torch.cat((noise, _COMPONENT_SCALE * code), -1)
