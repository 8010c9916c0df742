r"""The sites of a traced model, and the checks of their observations."""

from __future__ import annotations

__all__ = ["Site", "base_distribution", "is_neural", "log_prob_shape"]

from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor
from torch.distributions import constraints


@dataclass(frozen=True)
class Site:
    r"""A sample site of a traced model.

    Attributes:
        name: The site name.
        shape: The shape of one value of the site, batch (plate) dimensions included.
        event_dim: How many trailing dimensions of ``shape`` are event dimensions.
        support: The support constraint of the site's distribution.
        distribution: The distribution met at the site in the first trace.
        neural: Whether the distribution is a condgen neural prior.
        observed_by_model: Whether the model observes the site itself (``obs=`` given in the
            model, not by the data of :class:`~condgen.Problem`).
    """

    name: str
    shape: torch.Size
    event_dim: int
    support: constraints.Constraint
    distribution: dist.Distribution
    neural: bool = False
    observed_by_model: bool = False

    @property
    def batch_ndim(self) -> int:
        return len(self.shape) - self.event_dim

    @property
    def base(self) -> dist.Distribution:
        r"""The site's distribution unwrapped by :func:`base_distribution`."""
        return base_distribution(self.distribution)

    @property
    def discrete(self) -> bool:
        return bool(getattr(self.support, "is_discrete", False))


def base_distribution(fn: dist.Distribution) -> dist.Distribution:
    r"""``fn`` without the wrappers that only reshape or mask it (:class:`~pyro.distributions.
    Independent`, :class:`~pyro.distributions.MaskedDistribution`, expansion): for a neural
    site, the prior itself."""
    while True:
        if isinstance(fn, dist.Independent | dist.MaskedDistribution | dist.ExpandedDistribution):
            fn = fn.base_dist
        else:
            return fn


def is_neural(fn: dist.Distribution) -> bool:
    return bool(getattr(base_distribution(fn), "is_neural_prior", False))


def log_prob_shape(fn: dist.Distribution, value: Tensor, neural: bool) -> torch.Size:
    r"""The shape of ``fn.log_prob(value)``. A neural prior's follows from its shapes (its
    log-density solves an ODE); any other distribution is asked."""
    if neural:
        return torch.broadcast_shapes(fn.batch_shape, value.shape[: value.dim() - fn.event_dim])
    with torch.no_grad(), pyro.validation_enabled(False):
        return fn.log_prob(value).shape


def as_observation(name: str, value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return value
    try:
        return torch.as_tensor(value, dtype=torch.get_default_dtype())
    except Exception as error:
        raise ValueError(
            f"observation of site '{name}' must be a tensor, an array or a (nested) list of "
            f"numbers, got {type(value).__name__}"
        ) from error


def check_devices(sites: list[dict]) -> None:
    devices: dict[str, list[str]] = {}
    for site in sites:
        if site["value"].is_floating_point():
            devices.setdefault(str(site["value"].device), []).append(f"'{site['name']}'")
    if len(devices) > 1:
        listing = "; ".join(f"{', '.join(names)} on {d}" for d, names in devices.items())
        raise ValueError(
            f"the model's sites are on different devices ({listing}): move the observations, "
            "the prior (prior.to(device)) and the model's tensors to one device"
        )


def check_observation(site: Site, value: Tensor) -> None:
    if value.is_floating_point() and not torch.isfinite(value).all():
        bad = (~torch.isfinite(value)).sum().item()
        raise ValueError(
            f"observation of site '{site.name}' has {bad} NaN or infinite entries; remove them "
            "or mask them with poutine.mask / obs_mask"
        )
    fn = site.distribution
    shape = fn.batch_shape + fn.event_shape
    event_shape = tuple(value.shape[value.dim() - site.event_dim :]) if site.event_dim else ()
    try:
        fits = torch.broadcast_shapes(value.shape, shape) == shape
    except RuntimeError:
        fits = False
    if not fits or event_shape != tuple(fn.event_shape):
        raise ValueError(
            f"observation of site '{site.name}' has shape {tuple(value.shape)}, which does not "
            f"fit its distribution of batch shape {tuple(fn.batch_shape)} and event shape "
            f"{tuple(fn.event_shape)}; reshape the observation or the site's plates"
        )
    support_ok = fn.support.check(value)
    if not bool(torch.as_tensor(support_ok).all()):
        raise ValueError(
            f"observation of site '{site.name}' lies outside the support {fn.support} of "
            f"its distribution {type(fn).__name__}"
        )
