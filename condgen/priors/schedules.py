r"""Gaussian probability paths :math:`x_t = \alpha_t x + \sigma_t \epsilon` and the conversions
between denoiser, noise, score and velocity predictions."""

from __future__ import annotations

__all__ = [
    "CosineSchedule",
    "RectifiedSchedule",
    "Schedule",
    "VESchedule",
    "VPSchedule",
    "build_schedule",
]

import abc
import math
from typing import Any

import torch
from torch import Tensor


def _time(t: Tensor | float) -> Tensor:
    t = torch.as_tensor(t)
    return t if t.is_floating_point() else t.to(torch.get_default_dtype())


class Schedule(abc.ABC):
    r"""A Gaussian probability path :math:`x_t = \alpha_t x + \sigma_t \epsilon`,
    :math:`\epsilon \sim \mathcal{N}(0, I)`, for :math:`t \in [0, 1]`: :math:`t = 0` is nearly
    clean data and :math:`t = 1` nearly pure noise.

    A schedule is callable, ``alpha_t, sigma_t = schedule(t)``, and gives the derivatives
    :math:`\dot\alpha_t, \dot\sigma_t` with :meth:`derivatives`. Every parametrisation of a
    path network is a re-parametrisation of the denoiser :math:`D(x_t, t) = E[x \mid x_t]`:

    .. math::
        \hat\epsilon = \frac{x_t - \alpha_t D}{\sigma_t}, \quad
        \nabla \log p_t(x_t) = \frac{\alpha_t D - x_t}{\sigma_t^2}, \quad
        v = \dot\alpha_t D + \dot\sigma_t \hat\epsilon,

    where :math:`v` is the probability-flow velocity :math:`dx_t/dt = E[\dot\alpha_t x +
    \dot\sigma_t \epsilon \mid x_t]`.

    Attributes:
        t_min: The smallest time samplers integrate to (where :math:`\sigma_t > 0`).
    """

    t_min: float = 1e-3

    @abc.abstractmethod
    def __call__(self, t: Tensor) -> tuple[Tensor, Tensor]:
        r"""Returns :math:`(\alpha_t, \sigma_t)`, each shaped like ``t``."""

    @abc.abstractmethod
    def derivatives(self, t: Tensor) -> tuple[Tensor, Tensor]:
        r"""Returns :math:`(\dot\alpha_t, \dot\sigma_t)`, each shaped like ``t``."""

    def config(self) -> dict[str, Any]:
        r"""The constructor arguments, for saving."""
        return {"name": type(self).__name__, **vars(self)}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self).__name__, *vars(self).values()))

    # Conversions between parametrisations, written once for every schedule. ``t`` broadcasts
    # against the batch dimensions of ``x_t``; ``event_dim`` trailing dimensions are events.

    def _coefficients(self, t: Tensor, x_t: Tensor, event_dim: int, derivatives: bool = False):
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device)
        values = self.derivatives(t) if derivatives else self(t)
        return tuple(v.reshape(v.shape + (1,) * event_dim) for v in values)

    def noise(self, x_t: Tensor, x0: Tensor, t: Tensor, event_dim: int) -> Tensor:
        r"""Noise prediction :math:`(x_t - \alpha_t D) / \sigma_t` from a denoiser output."""
        alpha, sigma = self._coefficients(t, x_t, event_dim)
        return (x_t - alpha * x0) / sigma

    def score(self, x_t: Tensor, x0: Tensor, t: Tensor, event_dim: int) -> Tensor:
        r"""Score :math:`(\alpha_t D - x_t) / \sigma_t^2` (Tweedie's formula) from a denoiser."""
        alpha, sigma = self._coefficients(t, x_t, event_dim)
        return (alpha * x0 - x_t) / sigma**2

    def velocity(self, x_t: Tensor, x0: Tensor, t: Tensor, event_dim: int) -> Tensor:
        r"""Probability-flow velocity :math:`\dot\alpha_t D + \dot\sigma_t \hat\epsilon`."""
        dalpha, dsigma = self._coefficients(t, x_t, event_dim, derivatives=True)
        return dalpha * x0 + dsigma * self.noise(x_t, x0, t, event_dim)

    def denoiser_from_velocity(self, x_t: Tensor, v: Tensor, t: Tensor, event_dim: int) -> Tensor:
        r"""Inverts :meth:`velocity`: :math:`D = (\dot\sigma_t x_t - \sigma_t v) /
        (\dot\sigma_t \alpha_t - \sigma_t \dot\alpha_t)`."""
        alpha, sigma = self._coefficients(t, x_t, event_dim)
        dalpha, dsigma = self._coefficients(t, x_t, event_dim, derivatives=True)
        return (dsigma * x_t - sigma * v) / (dsigma * alpha - sigma * dalpha)

    def denoiser_from_noise(self, x_t: Tensor, eps: Tensor, t: Tensor, event_dim: int) -> Tensor:
        r"""Inverts :meth:`noise`: :math:`D = (x_t - \sigma_t \hat\epsilon) / \alpha_t`."""
        alpha, sigma = self._coefficients(t, x_t, event_dim)
        return (x_t - sigma * eps) / alpha


class VPSchedule(Schedule):
    r"""The variance-preserving path of score SDEs (DDPM in continuous time).

    .. math:: \alpha_t = \exp\Big(-\tfrac{1}{4} t^2 (\beta_1 - \beta_0) - \tfrac12 t \beta_0
        \Big), \quad \sigma_t = \sqrt{1 - \alpha_t^2}.

    Arguments:
        beta_min: :math:`\beta_0`.
        beta_max: :math:`\beta_1`.

    References:
        | Score-Based Generative Modeling through SDEs (Song et al., 2021)
        | https://arxiv.org/abs/2011.13456
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def _log_alpha(self, t: Tensor) -> Tensor:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def __call__(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = _time(t)
        alpha = self._log_alpha(t).exp()
        return alpha, (-torch.expm1(2 * self._log_alpha(t))).sqrt()

    def derivatives(self, t: Tensor) -> tuple[Tensor, Tensor]:
        alpha, sigma = self(t)
        dalpha = alpha * (-0.5 * t * (self.beta_max - self.beta_min) - 0.5 * self.beta_min)
        return dalpha, -alpha * dalpha / sigma


class VESchedule(Schedule):
    r"""The variance-exploding path: :math:`\alpha_t = 1`, :math:`\sigma_t = \sigma_0
    (\sigma_1 / \sigma_0)^t`.

    Arguments:
        sigma_min: :math:`\sigma_0`.
        sigma_max: :math:`\sigma_1`, larger than the data's scale.

    References:
        | Score-Based Generative Modeling through SDEs (Song et al., 2021)
        | https://arxiv.org/abs/2011.13456
    """

    t_min = 0.0

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def __call__(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = _time(t)
        sigma = self.sigma_min * (self.sigma_max / self.sigma_min) ** t
        return torch.ones_like(sigma), sigma

    def derivatives(self, t: Tensor) -> tuple[Tensor, Tensor]:
        _, sigma = self(t)
        return torch.zeros_like(sigma), sigma * math.log(self.sigma_max / self.sigma_min)


class CosineSchedule(Schedule):
    r"""The cosine (trigonometric) path: :math:`\alpha_t = \cos(\pi t / 2)`,
    :math:`\sigma_t = \sin(\pi t / 2)`; variance-preserving, with :math:`\alpha_1 = 0`.

    References:
        | Improved Denoising Diffusion Probabilistic Models (Nichol et al., 2021)
        | https://arxiv.org/abs/2102.09672
    """

    def __call__(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = _time(t)
        return torch.cos(0.5 * math.pi * t), torch.sin(0.5 * math.pi * t)

    def derivatives(self, t: Tensor) -> tuple[Tensor, Tensor]:
        alpha, sigma = self(t)
        return -0.5 * math.pi * sigma, 0.5 * math.pi * alpha


class RectifiedSchedule(Schedule):
    r"""The rectified (linear interpolation) path of flow matching: :math:`\alpha_t = 1 - t`,
    :math:`\sigma_t = t`, whose conditional velocity is :math:`\epsilon - x`.

    References:
        | Flow Matching for Generative Modeling (Lipman et al., 2023)
        | https://arxiv.org/abs/2210.02747

        | Flow Straight and Fast (Liu et al., 2023)
        | https://arxiv.org/abs/2209.03003
    """

    def __call__(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = _time(t)
        return 1 - t, t

    def derivatives(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = _time(t)
        return -torch.ones_like(t), torch.ones_like(t)


SCHEDULES = {
    cls.__name__: cls for cls in (VPSchedule, VESchedule, CosineSchedule, RectifiedSchedule)
}
_ALIASES = {
    "vp": VPSchedule,
    "ve": VESchedule,
    "cosine": CosineSchedule,
    "rectified": RectifiedSchedule,
}


def build_schedule(schedule: str | Schedule | dict[str, Any]) -> Schedule:
    r"""Resolves a schedule object, a name (``"vp"``, ``"ve"``, ``"cosine"``, ``"rectified"``)
    or a saved :meth:`Schedule.config` into a schedule.

    Raises:
        ValueError: For an unknown name.
    """
    if isinstance(schedule, Schedule):
        return schedule
    if isinstance(schedule, dict):
        config = dict(schedule)
        name = config.pop("name", None)
        if name not in SCHEDULES:
            raise ValueError(f"unknown schedule {name!r}; known schedules are {list(SCHEDULES)}")
        return SCHEDULES[name](**config)
    if isinstance(schedule, str) and schedule.lower() in _ALIASES:
        return _ALIASES[schedule.lower()]()
    raise ValueError(
        f"unknown schedule {schedule!r}; use one of {list(_ALIASES)} or a Schedule object"
    )
