r"""The one training loop of condgen: path priors, flow priors and the amortized estimators
all train through :class:`Trainer`.

Under ``torchrun --nproc_per_node=K`` (or in any initialised :mod:`torch.distributed` process
group) the trainer is data-parallel: every rank draws the same global minibatches and loss
noise, takes a contiguous shard of each, and the gradients and losses are averaged over the
ranks, so that the fit equals that of one process.

A low-level module (it imports nothing of condgen but :mod:`condgen._optim` and
:mod:`condgen._format`).
"""

from __future__ import annotations

__all__ = [
    "AUTOCAST_DTYPES",
    "CHECKPOINT_FORMAT",
    "VALIDATION_SEED",
    "WHOLE",
    "History",
    "Trainer",
    "fingerprint",
    "shuffled",
    "with_replacement",
]

import copy
import dataclasses
import hashlib
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from . import _format
from ._optim import adamw

VALIDATION_SEED = 0
r"""The seed of the generator that draws the validation loss's noise, anew at every epoch."""

CHECKPOINT_FORMAT = "condgen-checkpoint"
r"""The format of the checkpoints of :meth:`Trainer.fit` (:mod:`condgen._format`)."""

AUTOCAST_DTYPES = (torch.bfloat16,)
r"""The dtypes of the trainer's mixed precision (``autocast=``): bfloat16 only, whose range is
float32's, so that no loss scaling is needed (float16 would need a gradient scaler)."""

WHOLE = slice(None)
r"""The shard of a minibatch that a single process takes: all of it (see :data:`Loss`)."""

Loss = Callable[..., Tensor]
r"""``loss(indices, generator)``: the mean loss of the training items at ``indices``, drawing
its noise (if any) from the generator when one is given. In a data-parallel fit it is called
as ``loss(indices, generator, shard)`` with the global minibatch's ``indices`` and a slice:
the mean loss of the items ``indices[shard]``, with the noise drawn for all of ``indices``
and then sliced, so that the ranks' noise together is that of one process."""


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
    removes much of the minibatch noise). With ``autocast``, the losses are computed under
    :func:`torch.autocast` in that dtype on the parameters' device (mixed precision: matrix
    products and convolutions in bfloat16, reductions and the weights, their gradients, the
    optimiser's state and the average in the parameters' dtype). :meth:`fit` runs epochs of
    steps; with a
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
        autocast: None (full precision), or ``torch.bfloat16`` for mixed-precision losses on
            CUDA (where tensor cores make it pay) or on the CPU (where it pays only on CPUs with
            bfloat16 instructions).

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
        autocast: torch.dtype | None = None,
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
        if autocast is not None and autocast not in AUTOCAST_DTYPES:
            raise ValueError(
                f"autocast must be None or torch.bfloat16, got {autocast!r} (float16 would "
                f"need loss scaling, which the trainer does not do)"
            )
        self.autocast = autocast
        self.lr, self.clip, self.ema, self.label = lr, clip or 0.0, ema, label
        self.warmup, self.weight_decay = warmup, weight_decay
        self.optimizer = adamw(self.parameters, lr=lr, weight_decay=weight_decay)
        self.averages = [p.detach().clone() for p in self.parameters] if ema > 0 else None
        self.count = 0
        self.rank, self.world = 0, 1  # those of the process group, set by fit

    def step(self, loss: Tensor, share: float | None = None) -> float:
        r"""One optimisation step on ``loss``; returns its value.

        With ``share`` (a data-parallel fit), ``loss`` is the mean over this rank's shard,
        which holds that fraction of the global minibatch: the gradients and the value are
        the ``share``-weighted sums over the ranks, those of the global minibatch's mean.

        Raises:
            FloatingPointError: If the loss is NaN or infinite (the parameters keep the
                weights of the step before).
        """
        self.optimizer.zero_grad(set_to_none=True)
        if share is None:
            value = loss.item()
            self._check_finite(value)
            loss.backward()
        else:
            (loss * share).backward()
            value = _all_reduce(self.parameters, loss.detach() * share)
            self._check_finite(value)
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

    def precision(self) -> AbstractContextManager:
        r"""The context of the losses' forward passes: :func:`torch.autocast` on the
        parameters' device with the dtype ``autocast``, or nothing without.

        Raises:
            ValueError: With ``autocast`` for parameters on a device other than CUDA or the
                CPU.
        """
        if self.autocast is None:
            return nullcontext()
        device = self.parameters[0].device.type
        if device not in ("cuda", "cpu"):
            raise ValueError(
                f"{self.label}: autocast works on CUDA and the CPU, but the parameters are on "
                f"{device}: pass autocast=None"
            )
        return torch.autocast(device, dtype=self.autocast)

    def _check_finite(self, value: float) -> None:
        if not math.isfinite(value):
            raise FloatingPointError(
                f"the {self.label} loss is {value} at step {self.count}: lower the learning "
                f"rate (lr={self.lr}), clip gradients harder or standardise the data"
            )

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
        checkpoint: str | os.PathLike | None = None,
        every: int | None = None,
        identity: Mapping[str, Any] | None = None,
    ) -> History:
        r"""Trains for ``epochs`` epochs, each over the minibatches of indices that
        ``batches()`` yields (see :func:`with_replacement` and :func:`shuffled`).

        With ``checkpoint``, the fit is resumable: every ``every`` steps (a fit of one epoch)
        or epochs (a fit of several), and at the end, it writes the whole state of the loop
        atomically to that file in condgen's file format (:mod:`condgen._format`): the raw
        and averaged weights, the optimiser's and the learning-rate decay's states, the
        torch CPU random state and that of ``generator``, the counters, the early-stopping
        state with its best weights, and the history so far. A call that finds the file
        goes on from there and ends with the weights and history of an uninterrupted fit;
        when the file says that the fit finished, the call loads its final weights and
        returns its history at once. A file written by a fit of another module,
        configuration, data or ``identity`` raises a :class:`ValueError` naming
        ``checkpoint``.

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
            checkpoint: The file to resume from and to write checkpoints to (None: none).
            every: The steps (a fit of one epoch) or epochs (a fit of several) between
                checkpoints; None: 100 steps or 1 epoch.
            identity: Plain data (see :func:`fingerprint`) that a resumed fit must share
                with the one that wrote the checkpoint, beside the module's parameters and
                the trainer's options: the caller's configuration and data.

        Returns:
            The losses of every step and epoch.
        """
        per_step = epochs == 1
        self.rank, self.world = _process_group(self.parameters[0].device)
        scheduler = None
        if validation is not None and patience is not None and lr_decay < 1:
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, factor=lr_decay, patience=max(1, patience // 4), threshold=0.0
            )
        loop = _Loop()
        resumable = None
        if checkpoint is not None:
            every = every if every is not None else 100 if per_step else 1
            if isinstance(every, bool) or not isinstance(every, int) or every < 1:
                raise ValueError(f"every must be a positive integer, got {every!r}")
            options = {"epochs": epochs, "patience": patience, "lr_decay": lr_decay}
            options |= {"validation": None if validation is None else fingerprint(validation)}
            options |= {"generator": generator is not None, **(identity or {})}
            resumable = _Checkpoint(checkpoint, self._identity(options), scheduler, generator)
            resumable.writes = self.rank == 0
            if resumable.resume(self, loop):
                return loop.history
        if self.world > 1:  # the ranks start from rank 0's weights, as DistributedDataParallel
            for tensor in self.parameters + (self.averages or []):
                dist.broadcast(tensor.data, 0)
        history = loop.history
        was_training = self.module.training
        shown = progress and self.rank == 0
        bar = tqdm(total=None if per_step else epochs, desc=self.label, disable=not shown)
        bar.update(loop.step if per_step else loop.epoch)
        try:
            while loop.epoch < epochs:
                self.module.train()
                if loop.step == 0:
                    loop.epoch_random = _random_state(generator)
                for indices in _remaining(batches, loop, generator):
                    with self.precision():
                        shard_loss, share = self._loss(loss, indices, generator)
                    value = self.step(shard_loss, share)
                    history.steps.append(value)
                    loop.total += value * len(indices)
                    loop.count += len(indices)
                    loop.step += 1
                    if per_step:
                        bar.update()
                        bar.set_postfix(loss=f"{value:.4f}", refresh=False)
                        if resumable is not None and loop.step % every == 0:
                            resumable.write(self, loop)
                history.epochs.append(loop.total / max(loop.count, 1))
                loop.epoch, loop.step, loop.total, loop.count = loop.epoch + 1, 0, 0.0, 0
                if validation is not None:
                    with self.averaged():
                        value = self._validate(loss, validation)
                        if value < loop.best:
                            loop.best_state = copy.deepcopy(self.module.state_dict())
                    history.validation.append(value)
                    if value < loop.best:
                        loop.best, loop.waited = value, 0
                    else:
                        loop.waited += 1
                    if scheduler is not None:
                        scheduler.step(value)
                if not per_step:
                    bar.update()
                    postfix = {"train": f"{history.epochs[-1]:.3f}"}
                    if history.validation:
                        postfix["valid"] = f"{history.validation[-1]:.3f}"
                    bar.set_postfix(postfix, refresh=False)
                if patience is not None and loop.waited >= patience:
                    break
                if resumable is not None and not per_step and loop.epoch % every == 0:
                    resumable.write(self, loop)
        finally:
            bar.close()
            self.module.train(was_training)
        if loop.best_state is not None:
            self.module.load_state_dict(loop.best_state)
        elif self.averages is not None:
            with torch.no_grad():
                torch._foreach_copy_(self.parameters, self.averages)
        if resumable is not None:
            resumable.write(self, loop, finished=True)
        return history

    def _identity(self, options: Mapping[str, Any]) -> dict[str, Any]:
        r"""What a checkpoint's fit must share with this one: the module's parameters, the
        trainer's options and ``options``, as plain data."""
        names = {id(p): n for n, p in self.module.named_parameters()}
        parameters = [[names.get(id(p), ""), list(p.shape)] for p in self.parameters]
        trainer = {"label": self.label, "module": type(self.module).__name__, "lr": self.lr}
        trainer |= {"weight_decay": self.weight_decay, "clip": self.clip, "ema": self.ema}
        trainer |= {"warmup": self.warmup, "parameters": parameters}
        if self.autocast is not None:  # absent in full precision, as before the option
            trainer["autocast"] = str(self.autocast).removeprefix("torch.")
        identity = _plain({**trainer, **options})
        _format.check_plain(identity, "the fit's identity")
        return identity

    def _loss(
        self, loss: Loss, indices: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, float | None]:
        r"""The loss of this rank's shard of the minibatch ``indices`` and the shard's share
        of it (None in a single process)."""
        if self.world == 1:
            return loss(indices, generator), None
        if len(indices) < self.world:
            raise ValueError(
                f"{self.label}: a minibatch of {len(indices)} items cannot be shared by "
                f"{self.world} ranks: use a batch_size (and training set) of at least "
                f"{self.world} items"
            )
        shard = _shard(len(indices), self.rank, self.world)
        return loss(indices, generator, shard), (shard.stop - shard.start) / len(indices)

    def _validate(self, loss: Loss, validation: Tensor) -> float:
        r"""The mean loss of the module's weights on the validation items (each rank's
        shard of every chunk, summed over the ranks)."""
        generator = torch.Generator(validation.device).manual_seed(VALIDATION_SEED)
        self.module.eval()
        total = torch.zeros((), dtype=torch.float64, device=validation.device)
        with torch.no_grad(), self.precision():
            for chunk in validation.split(4096):
                if self.world == 1:
                    total += loss(chunk, generator).item() * len(chunk)
                    continue
                shard = _shard(len(chunk), self.rank, self.world)
                if shard.stop > shard.start:  # an empty shard can only be the last chunk's
                    total += loss(chunk, generator, shard).item() * (shard.stop - shard.start)
        if self.world > 1:
            dist.all_reduce(total)
        return total.item() / len(validation)


@dataclass
class _Loop:
    r"""The counters and early-stopping state of :meth:`Trainer.fit`, which a checkpoint
    holds."""

    history: History = field(default_factory=History)
    epoch: int = 0  # completed epochs
    step: int = 0  # completed steps of the current epoch
    total: float = 0.0  # the current epoch's summed loss
    count: int = 0  # and its number of items
    best: float = math.inf
    waited: int = 0
    best_state: dict[str, Tensor] | None = None
    epoch_random: dict[str, Any] | None = None  # the random state at the epoch's start


class _Checkpoint:
    r"""Reads and writes the checkpoint file of one :meth:`Trainer.fit` call."""

    def __init__(
        self,
        path: str | os.PathLike,
        identity: dict[str, Any],
        scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau | None,
        generator: torch.Generator | None,
    ):
        self.path, self.identity = os.fspath(path), identity
        self.scheduler, self.generator = scheduler, generator
        self.writes = True  # False on the ranks but the first of a data-parallel fit

    def resume(self, trainer: Trainer, loop: _Loop) -> bool:
        r"""Loads the checkpoint, if there is one, into ``trainer`` and ``loop``; returns
        whether it holds a finished fit (whose final weights the module then has)."""
        if not os.path.exists(self.path):
            return False
        document = _format.read(
            self.path, CHECKPOINT_FORMAT, 1, "condgen checkpoint", "fit(..., checkpoint=path)"
        )
        found = _plain(document["config"])
        for key in sorted(set(found) | set(self.identity)):
            if found.get(key) != self.identity.get(key):
                theirs, ours = _short(found.get(key)), _short(self.identity.get(key))
                raise ValueError(
                    f"checkpoint={self.path!r} was written by another fit ({key} is {theirs} "
                    f"there, {ours} here): pass another checkpoint path, or delete the file "
                    f"to start anew"
                )
        state = document["trainer"]
        trainer.module.load_state_dict(document["state_dict"])
        loop.history = History(**state["history"])
        if state["finished"]:
            return True
        trainer.optimizer.load_state_dict(state["optimizer"])
        if trainer.averages is not None:
            with torch.no_grad():
                torch._foreach_copy_(trainer.averages, list(state["averages"]))
        trainer.count = state["count"]
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        for name, value in state["loop"].items():
            setattr(loop, name, value)
        _set_random_state(state["random"], self.generator)
        return False

    def write(self, trainer: Trainer, loop: _Loop, finished: bool = False) -> None:
        r"""Writes the state of the fit (only its weights and history once ``finished``)."""
        if not self.writes:
            return
        state: dict[str, Any] = {"finished": finished}
        state["history"] = dataclasses.asdict(loop.history)
        if not finished:
            state["optimizer"] = trainer.optimizer.state_dict()
            state["averages"] = trainer.averages
            state["count"] = trainer.count
            state["scheduler"] = None if self.scheduler is None else self.scheduler.state_dict()
            state["loop"] = {
                f.name: getattr(loop, f.name)
                for f in dataclasses.fields(loop)
                if f.name != "history"
            }
            state["random"] = _random_state(self.generator)
        _format.write(
            self.path,
            CHECKPOINT_FORMAT,
            1,
            self.identity,
            trainer.module.state_dict(),
            trainer=state,
        )


def _random_state(generator: torch.Generator | None) -> dict[str, Any]:
    r"""The states of the torch CPU generator, of ``generator`` and (once initialised) of
    the CUDA generators."""
    state = {"torch": torch.get_rng_state(), "cuda": None, "generator": None}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def _set_random_state(state: Mapping[str, Any], generator: torch.Generator | None) -> None:
    r"""Restores what :func:`_random_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None:
        generator.set_state(state["generator"])


def _remaining(
    batches: Callable[[], Iterable[Tensor]], loop: _Loop, generator: torch.Generator | None
) -> Iterator[Tensor]:
    r"""The minibatches of the current epoch after its first ``loop.step``: the epoch's
    batches are made from the random state of its start, those done are skipped, and the
    random state goes back to that of the checkpoint."""
    if loop.step == 0:
        return iter(batches())
    current = _random_state(generator)
    _set_random_state(loop.epoch_random, generator)
    iterator = iter(batches())
    for _ in range(loop.step):
        next(iterator)
    _set_random_state(current, generator)
    return iterator


def _process_group(device: torch.device) -> tuple[int, int]:
    r"""This process's rank and the number of ranks: those of the initialised
    :mod:`torch.distributed` process group, or of the one that the variables of ``torchrun``
    (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``) describe, initialised here (NCCL for CUDA
    parameters, else gloo); (0, 1) in a single process."""
    if not dist.is_available():
        return 0, 1
    if not dist.is_initialized():
        if not all(os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR")):
            return 0, 1
        if int(os.environ["WORLD_SIZE"]) == 1:
            return 0, 1
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _shard(size: int, rank: int, world: int) -> slice:
    r"""The contiguous part of ``range(size)`` of rank ``rank`` of ``world``."""
    return slice(size * rank // world, size * (rank + 1) // world)


def _all_reduce(parameters: list[nn.Parameter], value: Tensor) -> float:
    r"""Sums the parameters' gradients (zero where None) and ``value`` over the ranks, in one
    all-reduce; returns the summed value."""
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in parameters]
    flat = torch.cat([g.reshape(-1) for g in grads] + [value.reshape(1).to(grads[0].dtype)])
    dist.all_reduce(flat)
    with torch.no_grad():
        offset = 0
        for p, g in zip(parameters, grads, strict=True):
            p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
            offset += g.numel()
    return flat[-1].item()


def fingerprint(*tensors: Tensor | None) -> str:
    r"""A SHA-256 digest of tensors' shapes, dtypes and values, for the ``identity`` of
    :meth:`Trainer.fit`."""
    digest = hashlib.sha256()
    for tensor in tensors:
        if tensor is None:
            digest.update(b"none;")
            continue
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{tuple(tensor.shape)}{tensor.dtype};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    r"""``value`` with its tuples made lists, as a checkpoint's configuration is compared."""
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
