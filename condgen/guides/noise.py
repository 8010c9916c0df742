r"""The common part of the semi-implicit and implicit guides, global and amortized: latents
driven by noise."""

from __future__ import annotations

__all__: list[str] = []

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from pyro.infer.autoguide import AutoContinuous
from torch import Size, Tensor

from .data_plate import _AmortizedGuide, _datum_major
from .latents import _NoiseLatent


class _NoiseGuide(AutoContinuous):
    r"""The common part of the guides over all latent sites driven by noise: the unconstrained
    packing of :class:`~pyro.infer.autoguide.AutoContinuous` and a network built at the first
    call from the model's initial point. The amortized form, for the local latents of a data
    plate, is a class of its own (:attr:`_amortized`)."""

    _amortized: ClassVar[type]
    r"""The amortized form of the guide, which takes an ``encoder`` and the options of a data
    plate: the class that the error names when they are given to this one."""

    def __init__(
        self,
        model: Callable,
        noise_dim: int | None,
        hidden: Sequence[int],
        init_loc_fn: Callable,
        init_scale: float,
        encoder: Callable | None,
        options: dict[str, Any],
    ):
        given = sorted(options) if encoder is None else ["encoder", *sorted(options)]
        if given:
            name, amortized = type(self).__name__, self._amortized.__name__
            raise ValueError(
                f"{name} guides all latent sites together: it takes no {given}. For the local "
                "latents of a data plate, amortized by an encoder of their observations, use "
                f"condgen.guides.{amortized}(model, encoder, ...)"
            )
        _set_noise_options(self, noise_dim, hidden, init_scale)
        super().__init__(model, init_loc_fn=init_loc_fn)

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        super()._setup_prototype(*args, **kwargs)
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


class _AmortizedNoiseGuide(_AmortizedGuide):
    r"""The common part of the amortized guides driven by noise: the noise options, and a
    network of noise and the encoder's context (:meth:`_build`, at the first call) that gives
    the local posterior (:meth:`_posterior`)."""

    def __init__(
        self,
        model: Callable,
        encoder: Callable,
        noise_dim: int | None,
        hidden: Sequence[int],
        init_loc_fn: Callable,
        init_scale: float,
        **options: Any,
    ):
        _set_noise_options(self, noise_dim, hidden, init_scale)
        super().__init__(model, encoder, init_loc_fn=init_loc_fn, **options)

    def _setup_local(self, *batch: Tensor) -> None:
        self._build(self._local_init.detach(), self._context_size(*batch))
        super()._setup_local(*batch)

    def _build(self, loc: Tensor, context: int) -> None:
        r"""Builds the network, centred at ``loc``, for a context of size ``context``."""
        raise NotImplementedError

    def _posterior(self, context: Tensor) -> _NoiseLatent:
        r"""The local posterior given the encoder's context ``[B, *(1,) * inner, C]``."""
        raise NotImplementedError

    def _local_posterior(self, *batch: Tensor, inner: int = 0) -> _NoiseLatent:
        return self._posterior(_datum_major(self.encoder(*batch), inner))


def _set_noise_options(
    guide: Any, noise_dim: int | None, hidden: Sequence[int], init_scale: float
) -> None:
    r"""Checks and sets the options that every guide driven by noise takes (global or
    amortized): ``noise_dim`` (None: the latent dimension, set by :func:`_noise_dim`),
    ``hidden`` and ``init_scale``."""
    if noise_dim is not None and not (isinstance(noise_dim, int) and noise_dim >= 1):
        raise ValueError(f"noise_dim must be a positive integer or None, got {noise_dim!r}")
    if not all(isinstance(h, int) and h >= 1 for h in hidden):
        raise ValueError(f"hidden must be a sequence of positive integers, got {hidden!r}")
    if not init_scale > 0:
        raise ValueError(f"init_scale must be positive, got {init_scale!r}")
    guide.noise_dim, guide.hidden, guide._init_scale = noise_dim, tuple(hidden), init_scale


def _noise_dim(guide: Any, features: int) -> int:
    r"""The guide's noise dimension, set to ``features`` (the latent dimension) if unset."""
    if guide.noise_dim is None:
        guide.noise_dim = features
    return guide.noise_dim
