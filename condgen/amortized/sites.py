r"""The sites of an amortized estimator: which are observed, and how values are flattened."""

from __future__ import annotations

__all__ = ["UnconstrainedSites", "flatten_observations", "observation", "observed_names"]

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pyro.poutine as poutine
import torch
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor
from torch.distributions import Transform, biject_to

from ..problem import Site


def observed_names(
    model: Callable,
    observed: Sequence[str] | str | None,
    args: tuple,
    kwargs: Mapping[str, Any],
    example: str,
) -> tuple[str, ...]:
    r"""The sites to condition on: those named, then those the model observes itself.

    Arguments:
        model: A Pyro model, traced once under :func:`pyro.poutine.uncondition`.
        observed: Site names, one name, or None.
        args: Positional arguments of the model.
        kwargs: Keyword arguments of the model.
        example: A call that names the observed sites, for the message when there are none.

    Returns:
        The observed site names, in order: the named ones first, without repeats.

    Raises:
        ValueError: If tracing fails, a name is not a sample site, or no site is observed.
    """
    try:
        with torch.no_grad():
            trace = poutine.trace(poutine.uncondition(model)).get_trace(*args, **kwargs)
    except Exception as error:
        raise ValueError(f"tracing the model failed: {error}") from error
    trace = prune_subsample_sites(trace)
    samples = {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["infer"].get("_deterministic")
    }
    named = [observed] if isinstance(observed, str) else list(observed or [])
    unknown = [n for n in named if n not in samples]
    if unknown:
        raise ValueError(
            f"observed has {unknown}, which are not sample sites of the model; its sample "
            f"sites are {list(samples)}"
        )
    self_observed = [n for n, s in samples.items() if s["infer"].get("was_observed")]
    names = tuple(dict.fromkeys([*named, *self_observed]))
    if not names:
        raise ValueError(
            f"the model observes no site by itself: name the sites to condition on, e.g. {example}"
        )
    return names


def _site_values(
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


def _as_tensor(value: Any) -> Tensor:
    r"""An observation as a floating-point tensor (integer counts are cast)."""
    if not isinstance(value, Tensor):
        value = torch.as_tensor(value)
    if not value.is_floating_point():
        value = value.to(torch.get_default_dtype())
    return value


def flatten_observations(
    sites: Mapping[str, Site], x: Mapping[str, Any], known: Sequence[str], like: Tensor
) -> Tensor:
    r"""The observed sites flattened and concatenated, :math:`[*\text{batch}, D]`.

    Arguments:
        sites: The observed sites, in order.
        x: A value ``[*batch, *site.shape]`` of every observed site, and optionally of the
            sites in ``known``.
        known: Other site names that ``x`` may hold (they are left out).
        like: A tensor whose device and dtype the result takes.

    Raises:
        ValueError: If a site is missing, misshaped, the batch shapes differ, or ``x`` holds
            an unknown site.
    """
    parts = [
        value.reshape(*batch, -1)
        for _, value, batch in _site_values(
            sites,
            x,
            _as_tensor,
            "observations",
            "the observation of site '{name}' is missing; this estimator conditions on {names}",
            "the observation of site '{name}' has shape {shape}, but the estimator was trained "
            "on simulations of shape {site_shape}",
        )
    ]
    unknown = sorted(set(x) - set(sites) - set(known))
    if unknown:
        raise ValueError(
            f"observations have sites {unknown} that this estimator does not condition on; "
            f"it conditions on {list(sites)}"
        )
    return torch.cat([p.to(like) for p in parts], -1)


def observation(
    sites: Mapping[str, Site],
    x: Mapping[str, Any] | Tensor,
    known: Sequence[str],
    like: Tensor,
    label: str,
) -> Tensor:
    r"""A given observation (or batch of them), flat as in :func:`flatten_observations` and
    checked to be finite; ``x`` may be a tensor when one site is observed.

    Arguments:
        sites, known, like: See :func:`flatten_observations`.
        x: The observation of every site in ``sites``, by name.
        label: The estimator's name, for messages.
    """
    if not isinstance(x, Mapping):
        if len(sites) != 1:
            raise ValueError(
                f"this estimator conditions on several sites {list(sites)}: pass the "
                "observation as a dict by site name"
            )
        x = {next(iter(sites)): x}
    for name in sites:
        if name in x and not torch.isfinite(torch.as_tensor(x[name])).all():
            raise ValueError(
                f"the observation of site '{name}' has NaN or infinite entries; {label} "
                "conditions on finite observations only"
            )
    return flatten_observations(sites, x, known, like)


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
        for name, value, batch in _site_values(
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
