r"""The training data and options of the amortized estimators (the loop is
:class:`condgen._training.Trainer`)."""

from __future__ import annotations

__all__ = ["finite_simulations", "split", "standardisation", "training_options"]

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor


def training_options(
    defaults: Mapping[str, Any], given: Mapping[str, Any], validation_fraction: float
) -> dict[str, Any]:
    r"""The options of :meth:`~condgen.amortized.PosteriorEstimator.fit`: those given, else
    the defaults, checked.

    Raises:
        ValueError: If an option is out of its range.
    """
    options = {k: defaults[k] if v is None else v for k, v in given.items()}
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must lie in (0, 1), got {validation_fraction!r}")
    if min(options["max_epochs"], options["batch_size"], options["patience"]) < 1:
        raise ValueError("max_epochs, batch_size and patience must be positive")
    if not 0 < options["lr_decay"] <= 1:
        raise ValueError(f"lr_decay must lie in (0, 1], got {options['lr_decay']!r}")
    return options


def finite_simulations(theta: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""The simulations ``theta`` ``[N, K]``, ``x`` ``[N, D]`` whose entries are all finite,
    and which those are (a mask ``[N]``); warns about the others.

    Raises:
        ValueError: If the shapes do not fit, or fewer than 2 simulations are finite.
    """
    if theta.dim() != 2 or x.dim() != 2 or theta.shape[0] != x.shape[0]:
        raise ValueError(
            "simulations must hold every latent and observed site with one leading "
            f"simulation dimension; got latents {tuple(theta.shape)}, observations "
            f"{tuple(x.shape)}"
        )
    finite = torch.isfinite(theta).all(-1) & torch.isfinite(x).all(-1)
    dropped = int((~finite).sum())
    if dropped:
        warnings.warn(
            f"{dropped} of {len(finite)} simulations have NaN or infinite values (or lie on "
            "the boundary of a latent site's support); they are left out",
            RuntimeWarning,
            stacklevel=4,  # the caller of PosteriorEstimator.fit
        )
    theta, x = theta[finite], x[finite]
    if len(theta) < 2:
        raise ValueError(f"only {len(theta)} finite simulations: need at least 2")
    return theta, x, finite


def split(n: int, validation_fraction: float, device: torch.device) -> tuple[Tensor, Tensor]:
    r"""A random split of ``n`` simulations: the training indices and the validation indices
    (a fraction ``validation_fraction`` of them, at least 1, and at least 1 left to train)."""
    order = torch.randperm(n, device=device)
    num_valid = min(max(1, round(validation_fraction * n)), n - 1)
    return order[num_valid:], order[:num_valid]


def standardisation(v: Tensor) -> tuple[Tensor, Tensor]:
    r"""The mean and standard deviation of ``v`` ``[N, F]`` over its first dimension (a
    standard deviation of (nearly) 0, or of a single row, is set to 1)."""
    s = v.std(0) if len(v) > 1 else torch.ones_like(v[0])
    return v.mean(0), torch.where(s > 1e-8, s, torch.ones_like(s))
