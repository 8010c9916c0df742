r"""Training of path priors (diffusion and flow matching) by denoising score matching."""

from __future__ import annotations

__all__ = ["SNR_CLIP", "fit_path_prior", "path_loss"]

import inspect
import os
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from .._training import WHOLE, Trainer, fingerprint, with_replacement
from .schedules import Schedule

SNR_CLIP = 100.0
r"""The clip :math:`\gamma` of the signal-to-noise ratio :math:`\alpha_t^2 / \sigma_t^2` in the
weight :math:`1 + \min(\mathrm{SNR}_t, \gamma)` of the denoiser loss (see
:func:`fit_path_prior`)."""


class _Trainable(Protocol):
    r"""What :func:`fit_path_prior` needs of a path prior (:class:`~condgen.priors.PathPrior`
    has it; the trainer does not import the priors, which call it)."""

    network: Any
    schedule: Schedule
    prediction: str
    event_shape: Any


def _accepts_drop(network: nn.Module) -> bool:
    try:
        parameters = inspect.signature(network.forward).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "drop" and p.kind is not p.VAR_POSITIONAL for p in parameters)


def _check_finite(name: str, x: Tensor) -> None:
    if x.is_floating_point() or x.is_complex():
        bad = x.numel() - int(torch.isfinite(x).sum())
        if bad:
            raise ValueError(
                f"{name} has {bad} NaN or infinite entries (of {x.numel()}); remove or impute "
                f"them before training"
            )


def path_loss(
    schedule: Schedule,
    prediction: str,
    network: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    t: Tensor,
    eps: Tensor,
) -> Tensor:
    r"""The regression loss of a path network at data ``x``, times ``t`` and noise ``eps``,
    on :math:`x_t = \alpha_t x + \sigma_t \epsilon`, for its parametrisation (see
    :func:`fit_path_prior`): :math:`\|f - \epsilon\|^2` (``"noise"``), :math:`\|f -
    (\dot\alpha_t x + \dot\sigma_t \epsilon)\|^2` (``"velocity"``) or :math:`(1 +
    \min(\mathrm{SNR}_t, \gamma)) \|f - x\|^2` (``"denoiser"``), averaged. The priors'
    trainer and the flow-matching and score estimators call it.

    Arguments:
        schedule: The path.
        prediction: ``"denoiser"``, ``"noise"`` or ``"velocity"``.
        network: :math:`x_t \mapsto f(x_t, t)` at the times ``t`` (and any context).
        x: The data, shaped ``[N, *event]``.
        t: The times, shaped ``[N]``.
        eps: Standard normal noise shaped like ``x``.
    """
    shape = (len(x),) + (1,) * (x.dim() - 1)
    alpha, sigma = (v.reshape(shape) for v in schedule(t))
    output = network(alpha * x + sigma * eps, t)
    if prediction == "noise":
        return (output - eps).square().mean()
    if prediction == "velocity":
        dalpha, dsigma = (v.reshape(shape) for v in schedule.derivatives(t))
        return (output - (dalpha * x + dsigma * eps)).square().mean()
    weight = 1 + (alpha / sigma).square().clamp(max=SNR_CLIP)
    return (weight * (output - x).square()).mean()


def fit_path_prior(
    prior: _Trainable,
    data: Tensor,
    *,
    context: Tensor | None = None,
    context_dropout: float = 0.0,
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    ema: float | None = 0.999,
    clip: float | None = 1.0,
    progress: bool = True,
    generator: torch.Generator | None = None,
    checkpoint: str | os.PathLike | None = None,
    every: int | None = None,
    autocast: torch.dtype | None = None,
) -> list[float]:
    r"""Trains the network of a path prior on samples of the data distribution.

    Each step draws a minibatch :math:`x` (with replacement), times
    :math:`t \sim \mathcal{U}(t_\text{min}, 1)`, noise :math:`\epsilon \sim \mathcal{N}(0, I)`
    and forms :math:`x_t = \alpha_t x + \sigma_t \epsilon`. The raw network output
    :math:`f(x_t, t)` is regressed on the target of its own parametrisation (so that the loss
    never divides by a small :math:`\sigma_t`), averaged over the event's coordinates:

    * ``prediction="denoiser"``: :math:`w_t \|f - x\|^2` with
      :math:`w_t = 1 + \min(\alpha_t^2 / \sigma_t^2, \gamma)`, :math:`\gamma` = :data:`SNR_CLIP`
      = 100. This is the weighting of EDM for unit-variance data, :math:`1 + \mathrm{SNR}_t`,
      which keeps the loss of the Bayes denoiser :math:`O(1)` at every :math:`t` (its error
      is about :math:`\sigma_t^2 / \alpha_t^2` per coordinate at low noise), with the
      signal-to-noise ratio clipped as in Min-SNR-:math:`\gamma`, so that the lowest noise
      levels, where an untrained network errs by :math:`O(1)`, do not swamp the gradient.
      The low-noise weight matters: the network must reproduce its input there to within
      :math:`\sigma_t / \alpha_t`, and its error there blurs every draw. On two moons,
      :math:`\gamma = 100` gave better draws than 5 (Min-SNR's value) and than no clip;
    * ``prediction="noise"``: :math:`\|f - \epsilon\|^2`, i.e. the denoiser loss weighted by
      :math:`\alpha_t^2 / \sigma_t^2`;
    * ``prediction="velocity"``: :math:`\|f - (\dot\alpha_t x + \dot\sigma_t \epsilon)\|^2`,
      the conditional flow-matching loss (target :math:`\epsilon - x` on the rectified path),
      i.e. the denoiser loss weighted by :math:`(\dot\sigma_t \alpha_t - \sigma_t
      \dot\alpha_t)^2 / \sigma_t^2`.

    Times are uniform in :math:`t` for every schedule; for :class:`VESchedule` this is
    log-uniform in :math:`\sigma`. The data should be roughly standardised, as the schedules
    assume.

    The optimiser is AdamW (its fused kernel where the device has one) with gradient-norm
    clipping. An exponential moving average (EMA) of
    the weights, with decay :math:`\min(\beta, (1 + k) / (10 + k))` at step :math:`k` (a warm-up
    that forgets the initial weights), is copied into the network at the end. The network is
    moved to the device and dtype of ``data``.

    Conditional priors take a ``context`` per data item; with probability ``context_dropout``
    an item's context is dropped, so that the same network learns :math:`p(x)` alongside
    :math:`p(x \mid c)` (classifier-free guidance). Networks whose ``forward`` accepts a
    ``drop`` keyword (as :class:`~condgen.priors.nets.MLP` and
    :class:`~condgen.priors.nets.UNet`) get a boolean mask, ``drop=mask`` (True: use no
    context); any other network is called twice a step, with ``context`` for the kept items
    and without it, ``network(x_t, t)``, for the dropped ones.

    Arguments:
        prior: A :class:`~condgen.priors.DiffusionPrior` (or
            :class:`~condgen.priors.FlowMatchingPrior`) whose network is an ``nn.Module``.
        data: Samples shaped ``[N, *event_shape]``.
        context: Contexts shaped ``[N, ...]``, one per sample, for a conditional prior.
        context_dropout: The probability of dropping an item's context.
        steps: The number of optimisation steps.
        batch_size: The minibatch size.
        lr: The learning rate.
        weight_decay: AdamW's decoupled weight decay.
        ema: The EMA decay :math:`\beta`; 0 or None keeps the raw weights.
        clip: The maximum gradient norm; None does not clip.
        progress: Whether to show a progress bar with the loss.
        generator: A random generator on the device of ``data``, for reproducible training.
        checkpoint: A file that makes the fit resumable: every ``every`` steps and at the end
            the whole training state is written to it atomically, and a call with the same
            arguments that finds it goes on from there (or, once finished, returns the stored
            losses at once). A file of another fit raises a ValueError.
        every: The steps between checkpoints (None: 100).
        autocast: None, or ``torch.bfloat16`` to compute the loss under
            :func:`torch.autocast` (mixed precision; the weights, gradients, optimiser state
            and average stay in the data's dtype, and bfloat16 needs no loss scaling). It pays
            on CUDA for convolutional networks (:class:`~condgen.priors.nets.UNet`), where the
            tensor cores run bfloat16; on most CPUs it is slower than float32.

    Returns:
        The loss of every step.

    Raises:
        ValueError: For data or contexts with NaN/inf entries or wrong shapes, or invalid
            options (an ``autocast`` other than None or ``torch.bfloat16``).
        FloatingPointError: When the loss becomes NaN or infinite; the network keeps the
            weights of that step.

    Example:
        >>> import torch
        >>> from condgen.priors import MLP, DiffusionPrior
        >>> from condgen.priors.training import fit_path_prior
        >>> data = torch.randn(500, 2) * 0.5 + 1.0
        >>> prior = DiffusionPrior(MLP(2, hidden=(32, 32)), event_shape=(2,))
        >>> losses = fit_path_prior(prior, data, steps=50, progress=False)  # e.g. 5000 to fit
        >>> len(losses), prior.sample((100,), steps=8).shape
        (50, torch.Size([100, 2]))

    References:
        | Elucidating the Design Space of Diffusion-Based Generative Models (Karras et al., 2022)
        | https://arxiv.org/abs/2206.00364

        | Efficient Diffusion Training via Min-SNR Weighting Strategy (Hang et al., 2023)
        | https://arxiv.org/abs/2303.09556

        | Classifier-Free Diffusion Guidance (Ho et al., 2022)
        | https://arxiv.org/abs/2207.12598
    """
    network = getattr(prior, "network", None)
    if not isinstance(network, nn.Module):
        raise TypeError(
            f"training needs the prior's network to be an nn.Module, got {type(network)}"
        )
    if not isinstance(data, Tensor) or not data.is_floating_point():
        raise ValueError("data must be a floating-point tensor shaped [N, *event_shape]")
    event_shape = tuple(prior.event_shape)
    if data.dim() != len(event_shape) + 1 or tuple(data.shape[1:]) != event_shape:
        raise ValueError(
            f"data has shape {tuple(data.shape)}, but this prior expects [N, *event_shape] = "
            f"[N, {', '.join(map(str, event_shape))}]"
        )
    if len(data) == 0:
        raise ValueError("data is empty")
    _check_finite("data", data)
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, got {steps} and {batch_size}")
    if not 0.0 <= context_dropout <= 1.0:
        raise ValueError(f"context_dropout must be in [0, 1], got {context_dropout}")
    device, dtype = data.device, data.dtype
    if context is not None:
        context = torch.as_tensor(context, device=device)
        if context.dim() == 0 or len(context) != len(data):
            raise ValueError(
                f"context has shape {tuple(context.shape)}, but needs one row per data item "
                f"({len(data)})"
            )
        _check_finite("context", context)
        if context.is_floating_point():
            context = context.to(dtype)
    elif context_dropout > 0:
        raise ValueError("context_dropout needs a context (one per data item)")

    network.to(device=device, dtype=dtype)
    schedule, prediction = prior.schedule, prior.prediction
    t_min = max(schedule.t_min, 1e-5)
    accepts_drop = context is not None and _accepts_drop(network)

    def forward(x_t: Tensor, t: Tensor, c: Tensor | None, drop: Tensor | None) -> Tensor:
        if c is None:
            return network(x_t, t)
        if drop is None:
            return network(x_t, t, c)
        if accepts_drop:
            return network(x_t, t, c, drop=drop)
        # The batch is i.i.d., so dropping its last items is dropping items at random.
        kept = len(drop) - int(drop.sum())
        outputs = []
        if kept > 0:
            outputs.append(network(x_t[:kept], t[:kept], c[:kept]))
        if kept < len(drop):
            outputs.append(network(x_t[kept:], t[kept:]))
        return torch.cat(outputs)

    def loss(index: Tensor, generator: torch.Generator | None, shard: slice = WHOLE) -> Tensor:
        options = {"generator": generator, "device": device, "dtype": dtype}
        x = data[index[shard]]
        t = t_min + (1 - t_min) * torch.rand(len(index), **options)
        eps = torch.randn((len(index), *event_shape), **options)
        c = drop = None
        if context is not None:
            c = context[index[shard]]
            if context_dropout > 0:
                drop = torch.rand(len(index), generator=generator, device=device) < context_dropout
                drop = drop[shard]
        network = partial(forward, c=c, drop=drop)
        return path_loss(schedule, prediction, network, x, t[shard], eps[shard])

    trainer = Trainer(
        network, lr=lr, weight_decay=weight_decay, clip=clip, ema=ema, label="fit",
        autocast=autocast,
    )  # fmt: skip
    batches = with_replacement(len(data), batch_size, steps, generator, device)
    identity = None
    if checkpoint is not None:
        identity = {"steps": steps, "batch_size": batch_size, "prediction": prediction}
        identity |= {"context_dropout": context_dropout, "schedule": repr(schedule)}
        identity |= {"data": fingerprint(data, context)}
    history = trainer.fit(
        loss,
        batches,
        generator=generator,
        progress=progress,
        checkpoint=checkpoint,
        every=every,
        identity=identity,
    )
    return history.steps
