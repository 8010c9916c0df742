r"""The training data and options of the amortized estimators (the loop is
:class:`condgen._training.Trainer`)."""

from __future__ import annotations

__all__ = [
    "STEPS_PER_EPOCH",
    "auto_batch_size",
    "finite_simulations",
    "split",
    "standardisation",
    "training_options",
]

import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

STEPS_PER_EPOCH = 20
r"""The optimizer steps of an epoch that the automatic minibatch size
(:func:`auto_batch_size`) asks for, up to the estimator's largest minibatch."""


def auto_batch_size(num_training: int, largest: int, steps: int = STEPS_PER_EPOCH) -> int:
    r"""The automatic minibatch size (``batch_size="auto"``) of ``num_training`` training
    simulations: :math:`\min(B_{\max}, \max(16, \lceil n / S \rceil))`, so that an epoch
    (one validation and one early-stopping check) is :math:`S` steps of the optimizer until
    the minibatch reaches ``largest`` :math:`B_{\max}`, and more beyond.

    Tied to the training set so that the early-stopping rules, counted in epochs, mean about the
    same progress of the optimizer at every budget: a fixed minibatch of 1024 makes an epoch one
    step at 1,000 simulations (the patience of 30 epochs is then 30 steps, and training stops
    before it has learnt much), and 88 at 100,000.

    Example:
        >>> [auto_batch_size(n, 512) for n in (90, 900, 9000, 90_000)]
        [16, 45, 450, 512]
    """
    return min(largest, max(16, math.ceil(num_training / steps)))


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
    batch = options["batch_size"]
    if batch != "auto" and (isinstance(batch, bool) or not isinstance(batch, int)):
        raise ValueError(f"batch_size must be a positive integer or 'auto', got {batch!r}")
    if min(options["max_epochs"], options["patience"], 1 if batch == "auto" else batch) < 1:
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
