r"""The base class of condgen's priors: Pyro distributions that a model can sample from."""

from __future__ import annotations

__all__ = ["FORMAT", "VERSION", "Prior"]

import os
from typing import Any

import pyro.distributions as dist
import torch
from torch.distributions import constraints

from .._format import check_plain, write

FORMAT = "condgen-prior"
VERSION = 1


class Prior(dist.TorchDistribution):
    r"""A prior over events of shape ``event_shape``, usable as ``pyro.sample("x", prior)``.

    :class:`~condgen.Problem` marks a site whose distribution is a :class:`Prior` as neural
    (``site.neural``), so that guidance methods know which site carries the learned prior.
    Priors have an empty batch shape; ``pyro.plate`` expands them as any distribution.

    Arguments:
        event_shape: The shape of one draw.
    """

    is_neural_prior = True
    arg_constraints: dict = {}  # noqa: RUF012 - torch.distributions API

    def __init__(self, event_shape: torch.Size | tuple[int, ...]):
        super().__init__(torch.Size(), torch.Size(event_shape), validate_args=False)

    @property
    def support(self) -> constraints.Constraint:
        return constraints.independent(constraints.real, len(self.event_shape))

    def to(self, *args, **kwargs) -> Prior:
        r"""Moves the prior's tensors and networks to a device and/or floating dtype, in place,
        with the arguments of :meth:`torch.nn.Module.to`; returns the prior.

        Example:
            >>> import torch
            >>> from condgen.priors import GaussianMixturePrior
            >>> covs = torch.eye(3).expand(2, 3, 3)
            >>> prior = GaussianMixturePrior(torch.ones(2), torch.randn(2, 3), covs)
            >>> prior.to(torch.float64).sample((4,)).dtype
            torch.float64
        """
        device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                floating = dtype if value.is_floating_point() else None
                setattr(self, name, value.to(device, floating, non_blocking))
            elif isinstance(value, torch.nn.Module):
                value.to(*args, **kwargs)
        return self

    def compile(self, **options: Any) -> Prior:
        r"""Compiles the prior's networks with :func:`torch.compile`, in place; returns the
        prior.

        Each network (an ``nn.Module`` attribute: a path prior's denoiser, a flow prior's
        flow) is compiled by :meth:`torch.nn.Module.compile`, which keeps the module, its class
        and its ``state_dict``: :meth:`save` writes the same file, :meth:`to` and ``fit`` work
        as before (``fit`` then trains the compiled network), and draws equal those of the
        uncompiled network to float tolerance.

        Where it pays: on CUDA, for convolutional denoisers (:class:`~condgen.priors.nets.UNet`)
        and large MLPs, where fusing the elementwise operations and cutting kernel launches
        speeds up training and sampling (``mode="max-autotune"`` or ``"reduce-overhead"``
        more so, for fixed batch shapes). Where it does not: small MLPs on the CPU, where the
        first call's compilation (tens of seconds with the inductor backend) outweighs what
        it saves, and runs whose batch shape keeps changing (each new shape may recompile;
        ``dynamic=True`` avoids that at some cost). Double backward (gradients of
        :meth:`log_prob` through the ODE's adjoint) is not supported by compiled networks.

        Arguments:
            options: Keyword options of :func:`torch.compile`, e.g. ``mode="max-autotune"``,
                ``dynamic=True``, ``backend="aot_eager"``.

        Returns:
            The prior itself.

        Raises:
            TypeError: If the prior has no network (e.g. a Gaussian mixture).

        Example:
            >>> import torch
            >>> from condgen.priors import MLP, DiffusionPrior
            >>> prior = DiffusionPrior(MLP(2, hidden=(16,)), event_shape=(2,), steps=4)
            >>> prior.compile(backend="eager").sample((3,)).shape
            torch.Size([3, 2])
        """
        networks = [v for v in vars(self).values() if isinstance(v, torch.nn.Module)]
        if not networks:
            raise TypeError(f"a {type(self).__name__} has no network to compile")
        for network in networks:
            network.compile(**options)
        return self

    def save(self, path: str | os.PathLike) -> None:
        r"""Saves the prior to ``path``, atomically and without pickling code; read it back
        with :func:`condgen.priors.load` (see :mod:`condgen.priors.io`).

        Raises:
            TypeError: For a class that does not encode itself (a method ``_encode`` of its
                own, returning the plain configuration and the tensors that
                :mod:`condgen.priors.io` rebuilds it from), a custom schedule, or a
                configuration that is not plain data.
        """
        if "_encode" not in type(self).__dict__:
            savable = sorted(c.__name__ for c in _subclasses(Prior) if "_encode" in c.__dict__)
            raise TypeError(f"cannot save a {type(self).__name__}: save_prior supports {savable}")
        config, state = self._encode()
        check_plain(config, f"the configuration of {type(self).__name__}")
        write(path, FORMAT, VERSION, config, state, **{"class": type(self).__name__})

    def _check_event(self, x: torch.Tensor, name: str = "x") -> None:
        n = len(self.event_shape)
        if x.dim() < n or tuple(x.shape[x.dim() - n :]) != tuple(self.event_shape):
            raise ValueError(
                f"{name} has shape {tuple(x.shape)}, but this prior's event shape is "
                f"{tuple(self.event_shape)}: the trailing dimensions must match it"
            )


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found
