r"""The one training loop of condgen: path priors, flow priors and the amortized estimators
all train through :class:`Trainer`.

A low-level module (it imports nothing of condgen but :mod:`condgen._optim`).
"""

from __future__ import annotations

__all__ = ["VALIDATION_SEED", "History", "Trainer", "shuffled", "with_replacement"]

import copy
import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ._optim import adamw

VALIDATION_SEED = 0
r"""The seed of the generator that draws the validation loss's noise, anew at every epoch."""

Loss = Callable[[Tensor, torch.Generator | None], Tensor]
r"""The mean loss of the training items at some indices, drawing its noise (if any) from the
generator when one is given."""


@dataclass
class History:
    r"""The losses of one call of :meth:`Trainer.fit`.

    Attributes:
        steps: The training loss of every step.
        epochs: The mean training loss of every epoch.
        validation: The validation loss of every epoch (empty without a validation set).
    """

    steps: list[float] = field(default_factory=list)
    epochs: list[float] = field(default_factory=list)
    validation: list[float] = field(default_factory=list)


def with_replacement(
    n: int, batch_size: int, steps: int, generator: torch.Generator | None, device: torch.device
) -> Callable[[], Iterator[Tensor]]:
    r"""One epoch of ``steps`` minibatches of ``batch_size`` indices in :math:`\{0, \dots, n -
    1\}`, drawn uniformly with replacement (from ``generator`` when given), each drawn just
    before its step."""

    def epoch() -> Iterator[Tensor]:
        for _ in range(steps):
            yield torch.randint(n, (batch_size,), generator=generator, device=device)

    return epoch


def shuffled(indices: Tensor, batch_size: int) -> Callable[[], Iterable[Tensor]]:
    r"""Epochs that visit every index of ``indices`` once, in a new random order each epoch,
    in minibatches of ``batch_size`` (the last one smaller)."""

    def epoch() -> Iterable[Tensor]:
        return indices[torch.randperm(len(indices), device=indices.device)].split(batch_size)

    return epoch


class Trainer:
    r"""AdamW on a module's trainable parameters, with gradient-norm clipping, a NaN guard and
    an exponential moving average (EMA) of the weights.

    Each step minimises the loss :math:`\ell(\phi)` of a minibatch, clips the gradient to the
    norm ``clip``, takes an AdamW step and updates the average :math:`\bar\phi \leftarrow
    \beta_k \bar\phi + (1 - \beta_k) \phi` with :math:`\beta_k = \min(\beta, (1 + k) / (10 +
    k))` at step :math:`k` (a warm-up that forgets the initial weights; Polyak averaging
    removes much of the minibatch noise). :meth:`fit` runs epochs of steps; with a
    validation set it evaluates the loss of the averaged weights after each epoch (its noise
    drawn anew from a generator seeded with :data:`VALIDATION_SEED`, so that validation
    losses differ only by the weights), multiplies the learning rate by ``lr_decay`` after
    ``patience // 4`` epochs without a new lowest validation loss, stops after ``patience``
    such epochs and keeps the averaged weights of the lowest one; without, the module ends
    with the averaged weights of the last step.

    Arguments:
        module: The module whose trainable parameters :math:`\phi` are fitted.
        lr: The learning rate.
        weight_decay: AdamW's decoupled weight decay.
        clip: The maximum gradient norm; None or 0 does not clip.
        ema: The EMA decay :math:`\beta` in :math:`[0, 1)`; 0 or None keeps the raw weights.
        warmup: Whether the decay warms up.
        label: The name of what trains, for the progress bar and messages.

    Example:
        >>> import torch
        >>> layer = torch.nn.Linear(1, 1)
        >>> x = torch.randn(256, 1)
        >>> y = 3 * x
        >>> trainer = Trainer(layer, lr=0.1)
        >>> loss = lambda index, generator: (layer(x[index]) - y[index]).square().mean()
        >>> history = trainer.fit(loss, with_replacement(256, 32, 300, None, x.device))
        >>> round(layer.weight.item(), 2)
        3.0
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        lr: float,
        weight_decay: float = 0.0,
        clip: float | None = None,
        ema: float | None = None,
        warmup: bool = True,
        label: str = "fit",
    ):
        self.module = module
        self.parameters = [p for p in module.parameters() if p.requires_grad]
        if not self.parameters:
            raise ValueError(f"{label}: the module has no trainable parameters")
        ema = ema or 0.0
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"ema must lie in [0, 1), got {ema!r}")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        self.lr, self.clip, self.ema, self.label = lr, clip or 0.0, ema, label
        self.warmup = warmup
        self.optimizer = adamw(self.parameters, lr=lr, weight_decay=weight_decay)
        self.averages = [p.detach().clone() for p in self.parameters] if ema > 0 else None
        self.count = 0

    def step(self, loss: Tensor) -> float:
        r"""One optimisation step on ``loss``; returns its value.

        Raises:
            FloatingPointError: If the loss is NaN or infinite (the parameters keep the
                weights of the step before).
        """
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(
                f"the {self.label} loss is {value} at step {self.count}: lower the learning "
                f"rate (lr={self.lr}), clip gradients harder or standardise the data"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip > 0:
            _clip_grad_norm(self.parameters, self.clip)
        self.optimizer.step()
        if self.averages is not None:
            decay = self.ema
            if self.warmup:
                decay = min(decay, (1 + self.count) / (10 + self.count))
            with torch.no_grad():
                torch._foreach_lerp_(self.averages, self.parameters, 1 - decay)
        self.count += 1
        return value

    @contextmanager
    def averaged(self) -> Iterator[None]:
        r"""Holds the averaged weights in the module inside the block (the raw ones after)."""
        _swap(self.parameters, self.averages)
        try:
            yield
        finally:
            _swap(self.parameters, self.averages)

    def fit(
        self,
        loss: Loss,
        batches: Callable[[], Iterable[Tensor]],
        *,
        epochs: int = 1,
        validation: Tensor | None = None,
        patience: int | None = None,
        lr_decay: float = 1.0,
        generator: torch.Generator | None = None,
        progress: bool = True,
    ) -> History:
        r"""Trains for ``epochs`` epochs, each over the minibatches of indices that
        ``batches()`` yields (see :func:`with_replacement` and :func:`shuffled`).

        Arguments:
            loss: The mean loss ``loss(indices, generator)`` of the items at ``indices``.
            batches: Makes the minibatches of one epoch.
            epochs: The (maximum) number of epochs.
            validation: The indices of the validation items, for early stopping.
            patience: Epochs without a new lowest validation loss before stopping (None:
                never stop early).
            lr_decay: The factor of the learning rate after ``patience // 4`` such epochs.
            generator: The generator of the training losses' noise (None: the global one).
            progress: Whether to show a progress bar (over epochs, or over the steps of a
                single epoch).

        Returns:
            The losses of every step and epoch.
        """
        history = History()
        scheduler = None
        if validation is not None and patience is not None and lr_decay < 1:
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, factor=lr_decay, patience=max(1, patience // 4), threshold=0.0
            )
        best, best_state, waited = math.inf, None, 0
        per_step = epochs == 1
        was_training = self.module.training
        bar = tqdm(total=None if per_step else epochs, desc=self.label, disable=not progress)
        try:
            for _ in range(epochs):
                self.module.train()
                total = count = 0
                for indices in batches():
                    value = self.step(loss(indices, generator))
                    history.steps.append(value)
                    total, count = total + value * len(indices), count + len(indices)
                    if per_step:
                        bar.update()
                        bar.set_postfix(loss=f"{value:.4f}", refresh=False)
                history.epochs.append(total / max(count, 1))
                if validation is not None:
                    with self.averaged():
                        value = self._validate(loss, validation)
                        if value < best:
                            best_state = copy.deepcopy(self.module.state_dict())
                    history.validation.append(value)
                    best, waited = (value, 0) if value < best else (best, waited + 1)
                    if scheduler is not None:
                        scheduler.step(value)
                if not per_step:
                    bar.update()
                    postfix = {"train": f"{history.epochs[-1]:.3f}"}
                    if history.validation:
                        postfix["valid"] = f"{history.validation[-1]:.3f}"
                    bar.set_postfix(postfix, refresh=False)
                if patience is not None and waited >= patience:
                    break
        finally:
            bar.close()
            self.module.train(was_training)
        if best_state is not None:
            self.module.load_state_dict(best_state)
        elif self.averages is not None:
            with torch.no_grad():
                torch._foreach_copy_(self.parameters, self.averages)
        return history

    def _validate(self, loss: Loss, validation: Tensor) -> float:
        r"""The mean loss of the module's weights on the validation items."""
        generator = torch.Generator(validation.device).manual_seed(VALIDATION_SEED)
        self.module.eval()
        with torch.no_grad():
            total = sum(loss(b, generator).item() * len(b) for b in validation.split(4096))
        return total / len(validation)


def _clip_grad_norm(parameters: list[Tensor], max_norm: float) -> None:
    r"""Scales the gradients so that their global norm is at most ``max_norm``; the same as
    ``nn.utils.clip_grad_norm_`` for parameters on one device and dtype, without its grouping
    overhead."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if grads:
        with torch.no_grad():
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            torch._foreach_mul_(grads, (max_norm / (norm + 1e-6)).clamp(max=1.0))


def _swap(parameters: list[nn.Parameter], averages: list[Tensor] | None) -> None:
    r"""Exchanges the values of the parameters and of their moving averages, in place."""
    if averages is None:
        return
    with torch.no_grad():
        for average, p in zip(averages, parameters, strict=True):
            current = p.detach().clone()
            p.copy_(average)
            average.copy_(current)
