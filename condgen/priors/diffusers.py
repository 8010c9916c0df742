r"""Pretrained `diffusers <https://huggingface.co/docs/diffusers>`_ models as path priors: a
discrete DDPM schedule as a continuous :class:`~condgen.priors.Schedule`, and a UNet as a
denoiser (the optional extra ``pip install condgen[diffusers]``)."""

from __future__ import annotations

__all__ = [
    "DiffusersDenoiser",
    "DiscreteSchedule",
    "denoiser_config",
    "denoiser_from_config",
    "diffusers_parts",
    "sample_on_timesteps",
]

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .samplers import DDIM, integrate
from .schedules import Schedule, _time

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def _require_diffusers(what: str = "DiffusionPrior.from_diffusers") -> Any:
    r"""The ``diffusers`` module, or an ImportError saying that ``what`` needs it."""
    try:
        import diffusers
    except ImportError:
        raise ImportError(
            f"{what} needs the diffusers package: pip install condgen[diffusers]"
        ) from None
    return diffusers


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


def denoiser_config(denoiser: DiffusersDenoiser) -> tuple[dict[str, Any], dict[str, Tensor]]:
    r"""The plain configuration and the tensors of a diffusers denoiser, from which
    :func:`denoiser_from_config` rebuilds it: the UNet's class name (one that ``diffusers``
    exports) and its ``config`` (the constructor arguments, less diffusers' private ``_`` keys),
    the prediction type, and the tensors ``alphas_cumprod`` (float64) and ``unet.*`` (the
    weights, as they are).

    Raises:
        TypeError: If the UNet is not a class of diffusers with a ``config``.
    """
    unet = denoiser.unet
    name = type(unet).__name__
    diffusers = _require_diffusers("saving a diffusers prior")
    config = getattr(unet, "config", None)
    if getattr(diffusers, name, None) is not type(unet) or not isinstance(config, Mapping):
        raise TypeError(
            f"cannot save the network {name}: a diffusers prior is saved as a class that the "
            "diffusers package exports (e.g. UNet2DModel) and its config, which loading rebuilds"
        )
    entry = {
        "name": "diffusers",
        "class": name,
        "config": {key: value for key, value in config.items() if not key.startswith("_")},
        "prediction_type": denoiser.prediction_type,
        "event_dim": denoiser.event_dim,
        "diffusers_version": diffusers.__version__,
    }
    state = {f"unet.{key}": value for key, value in unet.state_dict().items()}
    state["alphas_cumprod"] = torch.tensor(denoiser.schedule.alphas_cumprod, dtype=torch.float64)
    return entry, state


def denoiser_from_config(
    entry: Mapping[str, Any], state: Mapping[str, Tensor], unet: nn.Module | None = None
) -> DiffusersDenoiser:
    r"""Rebuilds the denoiser that :func:`denoiser_config` saved: the UNet from its class
    name and config through diffusers' ``from_config`` (or ``unet``, if given), with the saved
    weights assigned to it, in evaluation mode.

    Raises:
        ImportError: Without the diffusers package.
        ValueError: If the class is not one of diffusers, or the weights do not fit.
    """
    diffusers = _require_diffusers("loading a diffusers prior")
    if unet is None:
        cls = getattr(diffusers, entry["class"], None)
        if not (isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin)):
            raise ValueError(
                f"the saved network class {entry['class']!r} is not a model class of diffusers "
                f"{diffusers.__version__}"
            )
        unet = cls.from_config(dict(entry["config"]))
    weights = {key[5:]: value for key, value in state.items() if key.startswith("unet.")}
    try:
        unet.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as error:
        raise ValueError(
            f"the saved weights do not fit the network {type(unet).__name__}: {error}"
        ) from None
    schedule = DiscreteSchedule(state["alphas_cumprod"])
    return DiffusersDenoiser(
        unet.eval(), schedule, entry["prediction_type"], event_dim=entry["event_dim"]
    )


def sample_on_timesteps(
    prior: Any,
    timesteps: Tensor | Sequence[int],
    sample_shape: torch.Size | tuple[int, ...] = (),
    *,
    eta: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Draws from a diffusers prior along a diffusers scheduler's timesteps, as its pipeline
    does: :math:`x_{\tau_0} \sim \mathcal{N}(0, I)`, then the DDIM step of
    :func:`~condgen.priors.samplers.ancestral_step` from each timestep :math:`\tau_i` to the
    next (``eta=1``: the ancestral DDPM kernel, whose variance
    :math:`(1 - \bar\alpha_{\tau_{i+1}}) / (1 - \bar\alpha_{\tau_i})
    (1 - \bar\alpha_{\tau_i} / \bar\alpha_{\tau_{i+1}})` is ``DDPMScheduler``'s
    ``"fixed_small"``; ``eta=0``: deterministic DDIM), and the denoised estimate at the last
    timestep. With ``timesteps = scheduler.timesteps`` after ``set_timesteps`` this is the loop
    of diffusers' ``DDPMPipeline`` (or ``DDIMPipeline``) without clipping, on condgen's
    denoiser.

    :meth:`~condgen.priors.PathPrior.sample` with ``sampler="ddpm"`` and ``steps=T - 1`` walks
    nearly the same grid (uniform in :math:`t` down to :math:`10^{-5}`, within 0.01 of every
    integer timestep) from :math:`\sigma_1 \epsilon` instead.

    Arguments:
        prior: A prior of :meth:`~condgen.priors.DiffusionPrior.from_diffusers`.
        timesteps: Decreasing integer timesteps, e.g. ``scheduler.timesteps``.
        sample_shape: The batch shape of the draws.
        eta: The stochasticity of the DDIM step (1 is DDPM).
        generator: Optional random generator of the start and the noise of every step.

    Returns:
        The draws, shaped ``[*sample_shape, *event_shape]``.

    Example:
        >>> from diffusers import DDPMScheduler  # doctest: +SKIP
        >>> from condgen.evaluate.digits import digits_unet_prior  # doctest: +SKIP
        >>> scheduler = DDPMScheduler(clip_sample=False)  # doctest: +SKIP
        >>> scheduler.set_timesteps(100)  # doctest: +SKIP
        >>> prior = digits_unet_prior()  # doctest: +SKIP
        >>> sample_on_timesteps(prior, scheduler.timesteps, (16,)).shape  # doctest: +SKIP
        torch.Size([16, 1, 8, 8])
    """
    schedule = prior.schedule
    if not isinstance(schedule, DiscreteSchedule):
        raise ValueError(
            f"prior has the schedule {schedule!r}: sample_on_timesteps draws from a prior of "
            "DiffusionPrior.from_diffusers, on a DiscreteSchedule"
        )
    timesteps = torch.as_tensor(timesteps)
    if timesteps.dim() != 1 or len(timesteps) < 1 or (timesteps.diff() >= 0).any():
        raise ValueError(f"timesteps must be decreasing integers, got {timesteps.tolist()}")
    device, dtype = prior._device_dtype()
    shape = torch.Size(sample_shape) + prior.batch_shape + prior.event_shape
    event_dim = len(prior.event_shape)

    def denoise(x_t: Tensor, t: Tensor) -> Tensor:
        return prior.denoise(x_t, t.expand(x_t.shape[: x_t.dim() - event_dim]))

    with torch.no_grad():
        x = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        grid = schedule.times(timesteps).to(device=device, dtype=dtype)
        x, _ = integrate(DDIM(denoise, schedule, eta=eta, generator=generator), x, grid)
    return x
