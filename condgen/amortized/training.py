r"""The training loop of the amortized estimators: minibatch epochs with early stopping."""

from __future__ import annotations

__all__ = ["finite_simulations", "split", "standardisation", "train", "training_options"]

import copy
import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from .._optim import adamw

VALIDATION_SEED = 0
r"""The seed of the generator that draws the validation loss's noise, anew at every epoch."""


def training_options(
    defaults: Mapping[str, Any], given: Mapping[str, Any], validation_fraction: float
) -> dict[str, Any]:
    r"""The options of :func:`train`: those given, else the defaults, checked.

    Raises:
        ValueError: If an option is out of its range.
    """
    options = {k: defaults[k] if v is None else v for k, v in given.items()}
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must lie in (0, 1), got {validation_fraction!r}")
    if min(options["max_epochs"], options["batch_size"], options["patience"]) < 1 or not (
        options["lr"] > 0
    ):
        raise ValueError("max_epochs, batch_size, patience and lr must be positive")
    if not 0 < options["lr_decay"] <= 1:
        raise ValueError(f"lr_decay must lie in (0, 1], got {options['lr_decay']!r}")
    if not 0 <= options["ema"] < 1:
        raise ValueError(f"ema must lie in [0, 1), got {options['ema']!r}")
    return options


def finite_simulations(theta: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    r"""The simulations ``theta`` ``[N, K]``, ``x`` ``[N, D]`` whose entries are all finite;
    warns about the others.

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
    return theta, x


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


def train(
    module: nn.Module,
    objective: Callable[[Tensor, Tensor, torch.Generator | None], Tensor],
    theta: Tensor,
    x: Tensor,
    training_set: Tensor,
    validation_set: Tensor,
    *,
    label: str,
    max_epochs: int,
    batch_size: int,
    lr: float,
    patience: int,
    lr_decay: float,
    ema: float,
    clip: float,
    progress: bool,
) -> tuple[list[float], list[float]]:
    r"""Trains a module on the simulations ``training_set``, with early stopping on the
    simulations ``validation_set``.

    Each epoch runs Adam over shuffled minibatches of the training simulations, minimising
    the loss :math:`\ell(\phi)`, then evaluates :math:`\ell` on the validation simulations
    with the moving average of the weights, :math:`\bar\phi \leftarrow \beta \bar\phi + (1 -
    \beta) \phi` after each step (Polyak averaging, which removes much of the minibatch
    noise). A loss that draws noise (times, perturbations) draws it for validation from a
    generator seeded the same way at every epoch (:data:`VALIDATION_SEED`), so that validation
    losses differ only by the weights. The learning rate is multiplied by ``lr_decay`` after
    ``patience // 4`` epochs without a new lowest validation loss; training stops after
    ``patience`` such epochs, or after ``max_epochs``, and keeps the averaged weights of the
    lowest validation loss.

    Arguments:
        module: The module whose trainable parameters :math:`\phi` are fitted; it ends up
            with the averaged weights of the lowest validation loss.
        objective: The mean loss ``objective(theta, x, generator)`` of a minibatch, drawing
            its noise (if any) from ``generator`` when it is given.
        theta: The latents of the simulations ``[N, K]``.
        x: The observations of the simulations ``[N, D]``.
        training_set: The indices of the training simulations.
        validation_set: The indices of the validation simulations.
        label: The estimator's name, for the progress bar and messages.
        max_epochs, batch_size, lr, patience, lr_decay, ema, clip, progress: See
            :meth:`~condgen.amortized.PosteriorEstimator.fit`.

    Returns:
        The mean training loss and the validation loss of each epoch.

    Raises:
        FloatingPointError: If the training loss becomes NaN or infinite.
    """
    parameters = [p for p in module.parameters() if p.requires_grad]
    optimizer = adamw(parameters, lr=lr)
    scheduler = None
    if lr_decay < 1:
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=lr_decay, patience=max(1, patience // 4), threshold=0.0
        )
    batch_size = min(batch_size, len(training_set))
    averages = [p.detach().clone() for p in parameters] if ema > 0 else None
    best, best_state, waited = math.inf, None, 0
    training, validation = [], []
    try:
        with tqdm(total=max_epochs, desc=label, disable=not progress) as bar:
            for epoch in range(max_epochs):
                module.train()
                total = 0.0
                order = torch.randperm(len(training_set), device=theta.device)
                shuffled = training_set[order]
                for batch in shuffled.split(batch_size):
                    loss = objective(theta[batch], x[batch], None)
                    value = loss.item()
                    if not math.isfinite(value):
                        raise FloatingPointError(
                            f"the {label} loss is {value} at epoch {epoch}: lower lr or clip "
                            "gradients harder"
                        )
                    optimizer.zero_grad()
                    loss.backward()
                    if clip > 0:
                        nn.utils.clip_grad_norm_(parameters, clip)
                    optimizer.step()
                    if averages is not None:
                        with torch.no_grad():
                            torch._foreach_lerp_(averages, parameters, 1 - ema)
                    total += value * len(batch)
                training.append(total / len(training_set))

                module.eval()
                _swap(parameters, averages)  # validate (and keep) the averaged weights
                generator = torch.Generator(theta.device).manual_seed(VALIDATION_SEED)
                with torch.no_grad():
                    loss = sum(
                        objective(theta[b], x[b], generator).item() * len(b)
                        for b in validation_set.split(4096)
                    ) / len(validation_set)
                validation.append(loss)
                if loss < best:
                    best, waited = loss, 0
                    best_state = copy.deepcopy(module.state_dict())
                else:
                    waited += 1
                _swap(parameters, averages)
                if scheduler is not None:
                    scheduler.step(loss)
                bar.update()
                bar.set_postfix(train=f"{training[-1]:.3f}", valid=f"{loss:.3f}", refresh=False)
                if waited >= patience:
                    break
    finally:
        module.eval()
    if best_state is not None:
        module.load_state_dict(best_state)
    return training, validation


def _swap(parameters: list[nn.Parameter], averages: list[Tensor] | None) -> None:
    r"""Exchanges the values of the parameters and of their moving averages, in place."""
    if averages is None:
        return
    with torch.no_grad():
        for average, p in zip(averages, parameters, strict=True):
            current = p.detach().clone()
            p.copy_(average)
            average.copy_(current)
