r"""Time-conditioned networks for path priors: a residual MLP for vectors and a small U-Net for
images.

Both follow the calling convention of the priors, ``net(x_t, t)`` or ``net(x_t, t, context)``,
and accept ``context=None`` for the unconditional model (a learned null embedding), so that one
network serves the conditional and the unconditional prior of classifier-free guidance. An
optional boolean ``drop`` mask replaces the context of chosen items by the null embedding, which
is how :func:`~condgen.priors.training.fit_path_prior` trains both models in one pass.

Each network stores its constructor arguments, plain Python values, in ``net.config``; with the
registry :data:`NETS`, ``NETS[type(net).__name__](**net.config)`` rebuilds it without pickling
code. Any other ``nn.Module`` with ``forward(x_t, t)`` (or ``forward(x_t, t, context)``) is
accepted by the priors as well.
"""

from __future__ import annotations

__all__ = ["MLP", "NETS", "TimeEmbedding", "UNet", "activation_class"]

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def activation_class(activation: type[nn.Module] | str) -> type[nn.Module]:
    r"""The ``torch.nn`` activation class given as itself or by its name (``"ELU"``): how the
    networks and the flows of :mod:`condgen.priors` take an activation, so that a configuration
    of names can be saved.

    Raises:
        ValueError: If a name is not that of a ``torch.nn`` module class.
    """
    if isinstance(activation, str):
        cls = getattr(nn, activation, None)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ValueError(f"unknown activation {activation!r}: name a torch.nn module class")
        return cls
    return activation


class TimeEmbedding(nn.Module):
    r"""Sinusoidal (Fourier) features of a time :math:`t \in [0, 1]`,

    .. math:: \gamma(t) = \big(\sin(\omega_1 t), \dots, \sin(\omega_K t), \cos(\omega_1 t),
        \dots, \cos(\omega_K t)\big),

    with :math:`K` frequencies :math:`\omega_k` spaced geometrically from 1 to 1000 (periods
    from :math:`2\pi` down to about 0.006), so that both coarse and fine changes of :math:`t`
    are visible to the network.

    Arguments:
        features: The number of features :math:`2K` (even).

    References:
        | Attention Is All You Need (Vaswani et al., 2017)
        | https://arxiv.org/abs/1706.03762
    """

    def __init__(self, features: int):
        super().__init__()
        if features < 2 or features % 2:
            raise ValueError(f"the time embedding needs an even size >= 2, got {features}")
        frequencies = torch.logspace(0, 3, features // 2)
        self.register_buffer("frequencies", frequencies, persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        angles = t.unsqueeze(-1) * self.frequencies.to(t.dtype)
        return torch.cat((angles.sin(), angles.cos()), dim=-1)


class _ContextEmbedding(nn.Module):
    r"""A linear embedding of a context vector, or a learned null embedding for the items
    without one (``context=None``, or ``drop`` True)."""

    def __init__(self, context: int, features: int):
        super().__init__()
        self.linear = nn.Linear(context, features)
        self.null = nn.Parameter(torch.zeros(features))

    def forward(
        self,
        context: Tensor | None,
        drop: Tensor | None,
        dtype: torch.dtype,
        weight: Tensor | None = None,
    ) -> Tensor:
        r"""The embedding :math:`e = W_c c + b_c` (or the null one), or its image :math:`M e`
        under the matrix ``weight`` :math:`M`. The image is computed in the cheaper order: as
        :math:`(M W_c) c + M b_c` when the context is smaller than its embedding, so that a
        small context costs a product of its own size per item instead of the embedding's."""
        if context is None:
            return self._null(weight)
        if context.shape[-1:] != (self.linear.in_features,):
            raise ValueError(
                f"context has shape {tuple(context.shape)}, but this network expects "
                f"[*batch, {self.linear.in_features}]"
            )
        context = context.to(dtype)
        if weight is None:
            embedding = self.linear(context)
        elif self.linear.in_features < self.linear.out_features:
            embedding = F.linear(context, weight @ self.linear.weight, weight @ self.linear.bias)
        else:
            embedding = F.linear(self.linear(context), weight)
        if drop is not None:
            drop = torch.as_tensor(drop, dtype=torch.bool, device=embedding.device)
            embedding = torch.where(drop.unsqueeze(-1), self._null(weight), embedding)
        return embedding

    def _null(self, weight: Tensor | None) -> Tensor:
        return self.null if weight is None else weight @ self.null


def _broadcast_shapes(shapes: list[torch.Size]) -> torch.Size:
    if all(shape == shapes[0] for shape in shapes):  # fast path: torch's is slow in Python
        return shapes[0]
    return torch.broadcast_shapes(*shapes)


def _check_context(net: nn.Module, context: Tensor | None) -> None:
    if context is not None and net.context_embedding is None:
        raise ValueError(
            f"this {type(net).__name__} is unconditional (context=0) but was given a context; "
            f"build it with context=<context size>"
        )


class MLP(nn.Module):
    r"""A residual multi-layer perceptron :math:`f(x_t, t, c)` for vector events.

    The time enters through sinusoidal features :math:`\gamma(t)` (see :class:`TimeEmbedding`)
    and the context :math:`c` through a linear embedding; their concatenation :math:`e` shifts
    the pre-activations of every hidden layer,

    .. math:: h_0 = x_t, \quad h_{i+1} = h_i + a(W_i h_i + U_i e + b_i), \quad
        f = s(e) \odot x_t + W_o h_L + b_o,

    with the residual term kept when the widths of :math:`h_i` and :math:`h_{i+1}` match. The
    gate :math:`s(e)`, linear in the embedding and zero at initialisation, is a learned skip
    connection: it lets the network reproduce its input at low noise levels, where a denoiser
    is nearly the identity (as the skip scaling of EDM's preconditioning does), and at high
    noise levels, where a noise prediction is.
    A conditional MLP (``context > 0``) called with ``context=None`` uses a learned null
    embedding instead of :math:`c`: it is the unconditional model of classifier-free guidance.

    Arguments:
        features: The size :math:`d` of the events, for inputs and outputs ``[*batch, d]``.
        context: The size of the context vectors; 0 for an unconditional network.
        hidden: The widths of the hidden layers.
        time_embedding: The number of sinusoidal time features (even); the context embedding
            has the same size.
        activation: The activation, a ``torch.nn`` module class or its name.

    Example:
        >>> import torch
        >>> from condgen.priors import MLP
        >>> net = MLP(2, context=3)
        >>> x_t, t, c = torch.randn(16, 2), torch.rand(16), torch.randn(3)
        >>> net(x_t, t, c).shape  # the context broadcasts against the batch
        torch.Size([16, 2])
        >>> net(x_t, t).shape  # unconditional: null embedding
        torch.Size([16, 2])
    """

    def __init__(
        self,
        features: int,
        context: int = 0,
        hidden: Sequence[int] = (256, 256, 256),
        time_embedding: int = 64,
        activation: type[nn.Module] | str = nn.SiLU,
    ):
        super().__init__()
        hidden = [int(h) for h in hidden]
        if features < 1 or context < 0 or not hidden or min(hidden) < 1:
            raise ValueError(
                f"MLP needs features >= 1, context >= 0 and at least one hidden width >= 1, got "
                f"features={features}, context={context}, hidden={hidden}"
            )
        activation_cls = activation_class(activation)
        self.config: dict[str, Any] = {
            "features": int(features),
            "context": int(context),
            "hidden": hidden,
            "time_embedding": int(time_embedding),
            "activation": activation_cls.__name__,
        }
        self.time_embedding = TimeEmbedding(time_embedding)
        self.context_embedding = (
            _ContextEmbedding(context, time_embedding) if context > 0 else None
        )
        embedding = time_embedding * (2 if context > 0 else 1)
        self.hidden = hidden
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in itertools.pairwise([features, *hidden])
        )
        # all U_i e, and the gate s(e) of the skip connection, in one product
        self.conditioning = nn.Linear(embedding, sum(hidden) + features)
        nn.init.zeros_(self.conditioning.weight[sum(hidden) :])
        nn.init.zeros_(self.conditioning.bias[sum(hidden) :])
        self.activation = activation_cls()
        self.output = nn.Linear(hidden[-1], features)

    def forward(
        self,
        x_t: Tensor,
        t: Tensor | float,
        context: Tensor | None = None,
        drop: Tensor | None = None,
    ) -> Tensor:
        r"""
        Arguments:
            x_t: Noisy points shaped ``[*batch, features]``.
            t: Times shaped ``batch`` (or broadcastable, e.g. a scalar).
            context: Contexts shaped ``[*batch, context]`` (broadcastable), or None for the
                unconditional model.
            drop: Optional booleans shaped ``batch`` (broadcastable): the items where it is
                True ignore their context and use the null embedding, as with
                ``context=None``.

        Returns:
            The outputs, shaped ``[*batch, features]``.
        """
        _check_context(self, context)
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device)
        # U [gamma(t); e_c] = U_t gamma(t) + U_c e_c, each term at its own batch shape (a time
        # shared by the batch costs one product)
        weight, bias = self.conditioning.weight, self.conditioning.bias
        if self.context_embedding is None:
            e = F.linear(self.time_embedding(t), weight, bias)
        else:
            time_weight, context_weight = weight.split(self.config["time_embedding"], dim=-1)
            e = F.linear(self.time_embedding(t), time_weight, bias)
            e = e + self.context_embedding(context, drop, x_t.dtype, context_weight)
        batch = _broadcast_shapes([x_t.shape[:-1], e.shape[:-1]])
        h = x_t.expand(*batch, -1)
        *shifts, gate = e.split([*self.hidden, x_t.shape[-1]], dim=-1)
        for layer, shift in zip(self.layers, shifts, strict=True):
            y = self.activation(layer(h) + shift)
            h = h + y if y.shape == h.shape else y
        return gate * x_t + self.output(h)


def _groups(channels: int) -> int:
    return math.gcd(channels, 8)


class _ResidualBlock(nn.Module):
    r"""GroupNorm-SiLU-conv twice, with the embedding applied as FiLM (scale and shift) after
    the second normalisation, and a residual connection."""

    def __init__(self, in_channels: int, out_channels: int, embedding: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_channels), in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.film = nn.Linear(embedding, 2 * out_channels)
        self.norm2 = nn.GroupNorm(_groups(out_channels), out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as its skip connection
        nn.init.zeros_(self.conv2.bias)
        self.skip = (
            nn.Conv2d(in_channels, out_channels, 1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(e)[..., None, None].chunk(2, dim=1)
        h = self.conv2(F.silu(self.norm2(h) * (1 + scale) + shift))
        return self.skip(x) + h


class UNet(nn.Module):
    r"""A small U-Net :math:`f(x_t, t, c)` for image events ``[C, H, W]``.

    An input convolution is followed by ``levels`` stages, each a residual block and a strided
    convolution that halves the resolution, a middle residual block, and the mirrored stages
    (nearest upsampling and a convolution, then a residual block over the concatenation with
    the skip connection of the same resolution). Residual blocks are GroupNorm, SiLU and
    3x3 convolutions; the embedding :math:`e = \mathrm{MLP}(\gamma(t)) + \mathrm{Linear}(c)`
    of the time and the context modulates them by FiLM, :math:`h \mapsto h (1 + s(e)) +
    b(e)`. The widths are ``base`` at full resolution and ``2 * base`` below. A conditional
    U-Net called with ``context=None`` uses a learned null embedding instead of the context.

    Arguments:
        channels: The number of image channels :math:`C`.
        context: The size of the context vectors; 0 for an unconditional network.
        base: The number of feature maps at full resolution.
        levels: The number of halvings; ``H`` and ``W`` must be divisible by ``2**levels``.
        time_embedding: The number of sinusoidal time features (even).

    Example:
        >>> import torch
        >>> from condgen.priors import UNet
        >>> net = UNet(1, levels=2)
        >>> net(torch.randn(5, 1, 8, 8), torch.rand(5)).shape
        torch.Size([5, 1, 8, 8])

    References:
        | U-Net: Convolutional Networks for Biomedical Image Segmentation (Ronneberger et
        | al., 2015) https://arxiv.org/abs/1505.04597

        | Improved Denoising Diffusion Probabilistic Models (Nichol et al., 2021)
        | https://arxiv.org/abs/2102.09672
    """

    def __init__(
        self,
        channels: int,
        context: int = 0,
        base: int = 32,
        levels: int = 2,
        time_embedding: int = 64,
    ):
        super().__init__()
        if channels < 1 or context < 0 or base < 1 or levels < 0:
            raise ValueError(
                f"UNet needs channels >= 1, context >= 0, base >= 1 and levels >= 0, got "
                f"channels={channels}, context={context}, base={base}, levels={levels}"
            )
        self.config: dict[str, Any] = {
            "channels": int(channels),
            "context": int(context),
            "base": int(base),
            "levels": int(levels),
            "time_embedding": int(time_embedding),
        }
        self.channels, self.levels = channels, levels
        embedding = 4 * base
        widths = [base] + [2 * base] * levels
        self.time_embedding = TimeEmbedding(time_embedding)
        self.embedding = nn.Sequential(
            nn.Linear(time_embedding, embedding), nn.SiLU(), nn.Linear(embedding, embedding)
        )
        self.context_embedding = _ContextEmbedding(context, embedding) if context > 0 else None
        self.input = nn.Conv2d(channels, base, 3, padding=1)
        self.down = nn.ModuleList(
            _ResidualBlock(widths[i], widths[i], embedding) for i in range(levels)
        )
        self.downsample = nn.ModuleList(
            nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1) for i in range(levels)
        )
        self.middle = _ResidualBlock(widths[-1], widths[-1], embedding)
        self.upsample = nn.ModuleList(
            nn.Sequential(
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(widths[i + 1], widths[i], 3, padding=1),
            )
            for i in range(levels)
        )
        self.up = nn.ModuleList(
            _ResidualBlock(2 * widths[i], widths[i], embedding) for i in range(levels)
        )
        self.output = nn.Sequential(
            nn.GroupNorm(_groups(base), base), nn.SiLU(), nn.Conv2d(base, channels, 3, padding=1)
        )

    def forward(
        self,
        x_t: Tensor,
        t: Tensor | float,
        context: Tensor | None = None,
        drop: Tensor | None = None,
    ) -> Tensor:
        r"""
        Arguments:
            x_t: Noisy images shaped ``[*batch, C, H, W]``.
            t: Times shaped ``batch`` (or broadcastable, e.g. a scalar).
            context: Contexts shaped ``[*batch, context]`` (broadcastable), or None for the
                unconditional model.
            drop: Optional booleans shaped ``batch`` (broadcastable): the items where it is
                True use the null embedding, as with ``context=None``.

        Returns:
            The outputs, shaped ``[*batch, C, H, W]``.
        """
        _check_context(self, context)
        if x_t.dim() < 3 or x_t.shape[-3] != self.channels:
            raise ValueError(
                f"x_t has shape {tuple(x_t.shape)}, but this UNet expects [*batch, "
                f"{self.channels}, H, W]"
            )
        height, width = x_t.shape[-2:]
        if height % 2**self.levels or width % 2**self.levels:
            raise ValueError(
                f"the image size {height}x{width} must be divisible by 2**levels = "
                f"{2**self.levels}"
            )
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device)
        e = self.embedding(self.time_embedding(t))
        shapes = [x_t.shape[:-3], t.shape]
        if self.context_embedding is not None:
            c = self.context_embedding(context, drop, x_t.dtype)
            shapes.append(c.shape[:-1])
            batch = _broadcast_shapes(shapes)
            e = e + c
        else:
            batch = _broadcast_shapes(shapes)
        e = F.silu(e.expand(*batch, -1).reshape(-1, e.shape[-1]))
        h = self.input(x_t.expand(*batch, -1, -1, -1).reshape(-1, *x_t.shape[-3:]))
        skips = []
        for block, downsample in zip(self.down, self.downsample, strict=True):
            h = block(h, e)
            skips.append(h)
            h = downsample(h)
        h = self.middle(h, e)
        for i in reversed(range(self.levels)):
            h = self.up[i](torch.cat((self.upsample[i](h), skips[i]), dim=1), e)
        return self.output(h).reshape(*batch, *x_t.shape[-3:])


NETS: dict[str, type[nn.Module]] = {"MLP": MLP, "UNet": UNet}
r"""The networks that :mod:`condgen.priors` can rebuild from ``type(net).__name__`` and
``net.config``."""
