r"""Fixed-step samplers of Gaussian probability paths, written once against a denoiser."""

from __future__ import annotations

__all__ = ["SAMPLERS", "sample_path", "time_grid"]

import itertools
from collections.abc import Callable

import torch
from torch import Tensor

from .schedules import Schedule

Denoiser = Callable[[Tensor, Tensor], Tensor]


def time_grid(schedule: Schedule, steps: int, device=None, dtype=None) -> Tensor:
    r"""The decreasing times :math:`1 = t_0 > t_1 > \dots > t_N = t_\text{min}`, uniform in
    :math:`t`, for ``steps`` :math:`= N` steps."""
    if steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    t_min = max(schedule.t_min, 1e-5)
    return torch.linspace(1.0, t_min, steps + 1, device=device, dtype=dtype)


class _Counter:
    def __init__(self, denoise: Denoiser, event_dim: int):
        self.denoise, self.event_dim, self.nfe = denoise, event_dim, 0

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        return self.denoise(x_t, t.expand(x_t.shape[: x_t.dim() - self.event_dim]))


def _velocity(counter: _Counter, schedule: Schedule, x: Tensor, t: Tensor) -> Tensor:
    return schedule.velocity(x, counter(x, t), t, counter.event_dim)


def _euler(counter, schedule, x, grid, generator):
    for t, s in itertools.pairwise(grid):
        x = x + (s - t) * _velocity(counter, schedule, x, t)
    return x


def _heun(counter, schedule, x, grid, generator):
    for t, s in itertools.pairwise(grid):
        v = _velocity(counter, schedule, x, t)
        x_euler = x + (s - t) * v
        x = x + (s - t) * (v + _velocity(counter, schedule, x_euler, s)) / 2
    return x


def _ddim(eta: float):
    def step(counter, schedule, x, grid, generator):
        for t, s in itertools.pairwise(grid):
            alpha_t, sigma_t = schedule(t)
            alpha_s, sigma_s = schedule(s)
            x0 = counter(x, t)
            eps = (x - alpha_t * x0) / sigma_t
            # ancestral (DDPM) variance of q(x_s | x_t, x0), scaled by eta
            alpha_ts = alpha_t / alpha_s
            var_ts = sigma_t**2 - alpha_ts**2 * sigma_s**2
            var = (eta**2 * var_ts * sigma_s**2 / sigma_t**2).clamp(min=0.0)
            x = alpha_s * x0 + (sigma_s**2 - var).clamp(min=0.0).sqrt() * eps
            if eta > 0:
                x = x + var.sqrt() * torch.randn(
                    x.shape, generator=generator, device=x.device, dtype=x.dtype
                )
        return x

    return step


SAMPLERS: dict[str, Callable] = {
    "euler": _euler,
    "heun": _heun,
    "ddim": _ddim(0.0),
    "ddpm": _ddim(1.0),
}


def sample_path(
    denoise: Denoiser,
    schedule: Schedule,
    shape: torch.Size,
    event_dim: int,
    *,
    sampler: str = "heun",
    steps: int = 64,
    eta: float | None = None,
    x_init: Tensor | None = None,
    generator: torch.Generator | None = None,
    device=None,
    dtype=None,
) -> tuple[Tensor, int]:
    r"""Draws from a Gaussian path model by integrating from :math:`t = 1` to
    :math:`t_\text{min}`, then denoising once: :math:`x = D(x_{t_\text{min}}, t_\text{min})`.

    Samplers:

    * ``"euler"``, ``"heun"``: the probability-flow ODE :math:`dx_t/dt = \dot\alpha_t D +
      \dot\sigma_t (x_t - \alpha_t D)/\sigma_t`, with Euler (1 NFE a step) or Heun's second
      order method (2 NFE a step); deterministic.
    * ``"ddim"`` with ``eta``: :math:`x_s = \alpha_s D + \sqrt{\sigma_s^2 - c^2}\,\hat\epsilon
      + c z` with :math:`c^2 = \eta^2 \mathrm{Var}[x_s \mid x_t, x]`; ``eta=0`` is
      deterministic DDIM, ``eta=1`` (``"ddpm"``) ancestral sampling.

    Arguments:
        denoise: The denoiser :math:`D(x_t, t)` with ``t`` shaped like the batch.
        schedule: The path.
        shape: The shape of the draws, ``[*batch, *event]``.
        event_dim: The number of event dimensions in ``shape``.
        sampler: ``"euler"``, ``"heun"``, ``"ddim"`` or ``"ddpm"``.
        steps: The number of steps.
        eta: The stochasticity of ``"ddim"``.
        x_init: Optional start :math:`x_1`; by default :math:`\sigma_1 \epsilon`.
        generator: Optional random generator.

    Returns:
        The draws and the number of denoiser evaluations (NFE).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; samplers are {list(SAMPLERS)}")
    step = _ddim(eta) if sampler == "ddim" and eta is not None else SAMPLERS[sampler]
    counter = _Counter(denoise, event_dim)
    with torch.no_grad():
        if x_init is None:
            x_init = torch.randn(shape, generator=generator, device=device, dtype=dtype)
            x_init = x_init * schedule(torch.ones((), dtype=x_init.dtype))[1].to(x_init.device)
        grid = time_grid(schedule, steps, device=x_init.device, dtype=x_init.dtype)
        x = step(counter, schedule, x_init, grid, generator)
        x = counter(x, grid[-1])
    return x, counter.nfe
