r"""The observations of an amortized estimator, flattened and checked."""

from __future__ import annotations

__all__ = ["embedding_features", "flatten_observations", "observation", "observation_dict"]

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..problem import Site
from ..problem.unconstrained import site_values


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
        for _, value, batch in site_values(
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


def observation_dict(
    sites: Mapping[str, Site], x: Mapping[str, Any] | Tensor
) -> Mapping[str, Any]:
    r"""An observation by site name: ``x`` itself, or ``{site: x}`` for a tensor when one site
    is observed.

    Raises:
        ValueError: If ``x`` is not a mapping and several sites are observed.
    """
    if isinstance(x, Mapping):
        return x
    if len(sites) != 1:
        raise ValueError(
            f"this estimator conditions on several sites {list(sites)}: pass the "
            "observation as a dict by site name"
        )
    return {next(iter(sites)): x}


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
    x = observation_dict(sites, x)
    for name in sites:
        if name in x and not torch.isfinite(torch.as_tensor(x[name])).all():
            raise ValueError(
                f"the observation of site '{name}' has NaN or infinite entries; {label} "
                "conditions on finite observations only"
            )
    return flatten_observations(sites, x, known, like)


def embedding_features(
    embedding: nn.Module, embed: Callable[[Tensor], Tensor], x: Tensor, shape: tuple[int, ...]
) -> int:
    r"""The number of features that ``embed`` (standardisation, then ``embedding``) gives for
    two flat observations ``x`` ``[2, D]``, each reshaped to ``shape`` for the network.

    Raises:
        ValueError: If the embedding fails, or does not return ``[batch, features]``.
    """
    with torch.no_grad():
        training = embedding.training
        embedding.eval()
        try:
            out = embed(x)
        except Exception as error:
            message = f"the embedding network failed on observations shaped {(2, *shape)}: "
            raise ValueError(message + str(error)) from error
        finally:
            embedding.train(training)
    if out.dim() != 2 or out.shape[0] != 2:
        raise ValueError(
            f"the embedding network must return [batch, features], got {tuple(out.shape)} "
            f"for a batch of 2"
        )
    return out.shape[-1]
