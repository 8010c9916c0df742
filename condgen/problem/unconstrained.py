r"""Continuous latent sites as one flat unconstrained vector, and back."""

from __future__ import annotations

__all__ = ["UnconstrainedSites", "site_values"]

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Transform, biject_to

from .sites import Site


def site_values(
    sites: Mapping[str, Site],
    values: Mapping[str, Any],
    convert: Callable[[Any], Tensor],
    what: str,
    missing: str,
    misshaped: str,
) -> Iterator[tuple[str, Tensor, torch.Size]]:
    r"""Each site's value ``[*batch, *site.shape]`` with its batch shape, checked: all sites
    present (else ``missing``), shaped to fit (else ``misshaped``) and with one batch shape.

    The messages are formatted with ``name``, ``names`` (the sites), ``shape`` (the value's),
    ``site_shape`` and ``dims`` (the site's shape, comma-separated).
    """
    batch = None
    for name, site in sites.items():
        if name not in values:
            raise ValueError(missing.format(name=name, names=list(sites)))
        value = convert(values[name])
        n = len(site.shape)
        if value.dim() < n or tuple(value.shape[value.dim() - n :]) != tuple(site.shape):
            dims = ", ".join(map(str, site.shape))
            shape, site_shape = tuple(value.shape), tuple(site.shape)
            raise ValueError(
                misshaped.format(name=name, shape=shape, site_shape=site_shape, dims=dims)
            )
        here = value.shape[: value.dim() - n]
        if batch is not None and here != batch:
            raise ValueError(
                f"{what} have different batch shapes {tuple(batch)} and {tuple(here)}"
            )
        batch = here
        yield name, value, here


class UnconstrainedSites:
    r"""Continuous latent sites mapped to one flat unconstrained vector, as Pyro's
    ``AutoContinuous`` guides map them.

    A value :math:`\theta_s` of site :math:`s` is mapped to :math:`z_s = T_s^{-1}(\theta_s) \in
    \mathbb{R}^{k_s}`, :math:`T_s` = ``biject_to(site.support)``, and the :math:`z_s` are
    flattened and concatenated into :math:`z \in \mathbb{R}^K`, :math:`K = \sum_s k_s`.

    Arguments:
        sites: The latent sites, in order.
        label: The estimator's name, for messages.

    Attributes:
        features: :math:`K`.

    Raises:
        ValueError: If a site is discrete or its support has no bijection to
            :math:`\mathbb{R}^{k}`.
    """

    def __init__(self, sites: Mapping[str, Site], label: str):
        self.sites = dict(sites)
        self.transforms: dict[str, Transform] = {}
        self.shapes: dict[str, torch.Size] = {}
        for name, site in self.sites.items():
            if site.discrete:
                raise ValueError(
                    f"{label} needs continuous latent sites, but site '{name}' has discrete "
                    f"support {site.support}; marginalise it out, or use method='importance'"
                )
        for name, site in self.sites.items():
            try:
                transform = biject_to(site.support)
            except NotImplementedError:
                raise ValueError(
                    f"site '{name}' has support {site.support}, which torch cannot map to an "
                    "unconstrained space (biject_to)"
                ) from None
            self.transforms[name] = transform
            self.shapes[name] = torch.Size(transform.inv.forward_shape(site.shape))
        self.features = sum(math.prod(s) for s in self.shapes.values())

    def pack(self, values: Mapping[str, Tensor], like: Tensor) -> tuple[Tensor, Tensor]:
        r"""Constrained values ``[*batch, *site.shape]`` by site, mapped to :math:`z`
        ``[*batch, K]`` (on the device and dtype of ``like``), with :math:`\log |\det
        \partial T(z) / \partial z|` ``[*batch]``."""
        parts, log_det = [], 0.0
        for name, value, batch in site_values(
            self.sites,
            values,
            lambda v: torch.as_tensor(v).to(like),
            "values",
            "values are missing the latent site '{name}'; latent sites are {names}",
            "values of site '{name}' must be shaped [*batch, {dims}], got {shape}",
        ):
            transform = self.transforms[name]
            z = transform.inv(value)
            jacobian = transform.log_abs_det_jacobian(z, value)
            log_det = log_det + jacobian.reshape(*batch, -1).sum(-1)
            parts.append(z.reshape(*batch, -1))
        return torch.cat(parts, -1), log_det

    def unpack(self, z: Tensor) -> dict[str, Tensor]:
        r"""Flat unconstrained values :math:`z` ``[*batch, K]`` back to constrained values by
        site, each ``[*batch, *site.shape]``."""
        values, start = {}, 0
        batch = z.shape[:-1]
        for name, shape in self.shapes.items():
            size = math.prod(shape)
            part = z[..., start : start + size].reshape(*batch, *shape)
            values[name] = self.transforms[name](part).reshape(*batch, *self.sites[name].shape)
            start += size
        return values
