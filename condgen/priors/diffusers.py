r"""Pretrained `diffusers <https://huggingface.co/docs/diffusers>`_ models as path priors: a
discrete DDPM schedule as a continuous :class:`~condgen.priors.Schedule`, and a UNet as a
denoiser (the optional extra ``pip install condgen[diffusers]``)."""

from __future__ import annotations

__all__ = ["DiffusersDenoiser", "DiscreteSchedule", "diffusers_parts"]

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .schedules import Schedule, _time

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def _require_diffusers() -> None:
    try:
        import diffusers  # noqa: F401
    except ImportError:
        raise ImportError(
            "DiffusionPrior.from_diffusers needs the diffusers package: "
            "pip install condgen[diffusers]"
        ) from None


class DiscreteSchedule(Schedule):
    r"""The variance-preserving path of a discrete-time diffusion model, given by its cumulative
    products :math:`\bar\alpha_k`, :math:`k = 0, \dots, T - 1` (``alphas_cumprod`` of a
    diffusers scheduler), made continuous in :math:`t \in [0, 1]`.

    The time :math:`t` is the discrete timestep :math:`\tau = t (T - 1)` rescaled, and the
    log-SNR :math:`\lambda_k = \log(\bar\alpha_k / (1 - \bar\alpha_k))` is interpolated
    linearly in :math:`\tau` between timesteps:

    .. math:: \alpha_t = \sqrt{\operatorname{sigmoid}(\lambda(\tau))}, \quad
        \sigma_t = \sqrt{\operatorname{sigmoid}(-\lambda(\tau))}.

    At every integer timestep :math:`\alpha_t^2 = \bar\alpha_k` exactly (up to rounding), so
    that a sampler whose grid holds only integer timesteps (:meth:`times`) walks the same path
    as diffusers. Between timesteps the network was never trained; there the path is exact
    for the interpolated log-SNR, and the network is asked at the fractional timestep (see
    :class:`DiffusersDenoiser`). The derivatives are those of the piecewise-linear log-SNR,
    constant on each interval: the ODE samplers (Euler, Heun) see a velocity with kinks at the
    timesteps, an error of the order of one training step, :math:`1 / (T - 1)` in :math:`t`.

    Arguments:
        alphas_cumprod: :math:`\bar\alpha_0 > \dots > \bar\alpha_{T-1}`, each in
            :math:`(0, 1)`.
    """

    t_min = 0.0  # sigma_0 = sqrt(1 - alphas_cumprod[0]) > 0

    def __init__(self, alphas_cumprod: Sequence[float] | Tensor):
        values = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if values.numel() < 2 or not ((values > 0) & (values < 1)).all():
            raise ValueError(
                "alphas_cumprod must hold at least two values in (0, 1), one per training "
                f"timestep; got {values.numel()} values in [{values.min()}, {values.max()}]"
            )
        self.alphas_cumprod = tuple(values.tolist())

    @property
    def num_timesteps(self) -> int:
        r"""The number :math:`T` of training timesteps."""
        return len(self.alphas_cumprod)

    def timesteps(self, t: Tensor | float) -> Tensor:
        r"""The (fractional) discrete timesteps :math:`\tau = t (T - 1)` of times ``t``, rounded
        to the integer timestep within :math:`10^{-4}` (so that a float32 grid of :meth:`times`
        gives back the integer timesteps exactly)."""
        tau = _time(t).clamp(0, 1) * (self.num_timesteps - 1)
        nearest = tau.round()
        return torch.where((tau - nearest).abs() < 1e-4, nearest, tau)

    def times(self, timesteps: Tensor | Sequence[int]) -> Tensor:
        r"""The times :math:`t = \tau / (T - 1)` of discrete timesteps, e.g. the grid of a
        diffusers scheduler's ``timesteps`` after ``set_timesteps``."""
        return torch.as_tensor(timesteps, dtype=torch.get_default_dtype()) / (
            self.num_timesteps - 1
        )

    def _log_snr(self, t: Tensor) -> tuple[Tensor, Tensor]:
        r"""The interpolated :math:`\lambda(t)` and its derivative :math:`d\lambda / dt`."""
        table = torch.tensor(self.alphas_cumprod, dtype=torch.float64, device=t.device)
        table = table.log() - (-table).log1p()
        tau = self.timesteps(t.double())
        k = tau.floor().clamp(max=self.num_timesteps - 2).long()
        slope = table[k + 1] - table[k]
        value = table[k] + (tau - k) * slope
        return value.to(t.dtype), (slope * (self.num_timesteps - 1)).to(t.dtype)

    def __call__(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = _time(t)
        log_snr, _ = self._log_snr(t)
        return torch.sigmoid(log_snr).sqrt(), torch.sigmoid(-log_snr).sqrt()

    def derivatives(self, t: Tensor) -> tuple[Tensor, Tensor]:
        # d alpha / d lambda = alpha sigma^2 / 2, d sigma / d lambda = -sigma alpha^2 / 2
        t = _time(t)
        alpha, sigma = self(t)
        _, dlog_snr = self._log_snr(t)
        return 0.5 * alpha * sigma**2 * dlog_snr, -0.5 * sigma * alpha**2 * dlog_snr

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_timesteps={self.num_timesteps})"


class DiffusersDenoiser(nn.Module):
    r"""A diffusers UNet read as a denoiser :math:`D(x_t, t) = E[x \mid x_t]` on a
    :class:`DiscreteSchedule`.

    The network is called as diffusers does, ``unet(x, timestep).sample`` on images shaped
    ``[N, C, H, W]``, with the fractional timestep :math:`\tau = t (T - 1)`; the batch
    dimensions of :math:`x_t` are flattened into ``N``. Its output is read by the scheduler's
    ``prediction_type``:

    .. math:: D = \frac{x_t - \sigma_t \hat\epsilon}{\alpha_t} \ (\text{epsilon}), \quad
        D = \alpha_t x_t - \sigma_t \hat v \ (\text{v\_prediction}), \quad
        D = \hat x \ (\text{sample}),

    with :math:`\alpha_t^2 + \sigma_t^2 = 1`. Clipping or thresholding of the predicted
    sample (diffusers' ``clip_sample``, ``thresholding``) is not applied: the denoiser stays
    the network's estimate, differentiable everywhere, as guidance methods need.

    Arguments:
        unet: The network, e.g. a ``diffusers.UNet2DModel``.
        schedule: The path of the scheduler it was trained with.
        prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
        event_dim: The number of event dimensions of :math:`x_t` (3 for images).
    """

    def __init__(
        self,
        unet: nn.Module,
        schedule: DiscreteSchedule,
        prediction_type: str = "epsilon",
        event_dim: int = 3,
    ):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"unknown prediction_type {prediction_type!r}; condgen reads the diffusers "
                f"prediction types {PREDICTION_TYPES}"
            )
        self.unet, self.schedule = unet, schedule
        self.prediction_type, self.event_dim = prediction_type, event_dim

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        event = x_t.shape[x_t.dim() - self.event_dim :]
        batch = x_t.shape[: x_t.dim() - self.event_dim]
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device).expand(batch)
        x = x_t.reshape(-1, *event)
        output = self.unet(x, self.schedule.timesteps(t).reshape(-1)).sample
        output = output.reshape(x_t.shape)
        if self.prediction_type == "sample":
            return output
        alpha, sigma = self.schedule._coefficients(t, x_t, self.event_dim)
        if self.prediction_type == "epsilon":
            return (x_t - sigma * output) / alpha
        return alpha * x_t - sigma * output


def diffusers_parts(
    unet: nn.Module,
    scheduler: Any,
    event_shape: torch.Size | tuple[int, ...] | None = None,
) -> tuple[DiffusersDenoiser, DiscreteSchedule, tuple[int, ...]]:
    r"""The denoiser, schedule and event shape of a diffusers UNet and the scheduler it was
    trained with, from which :meth:`~condgen.priors.DiffusionPrior.from_diffusers` builds the
    prior."""
    _require_diffusers()
    alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
    if alphas_cumprod is None:
        raise ValueError(
            f"the scheduler {type(scheduler).__name__} has no alphas_cumprod: from_diffusers "
            "reads variance-preserving schedulers such as DDPMScheduler or DDIMScheduler"
        )
    if event_shape is None:
        config = unet.config
        size = config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        event_shape = (config.in_channels, *size)
    schedule = DiscreteSchedule(alphas_cumprod)
    prediction_type = scheduler.config.prediction_type
    denoiser = DiffusersDenoiser(unet, schedule, prediction_type, event_dim=len(event_shape))
    return denoiser, schedule, tuple(event_shape)
