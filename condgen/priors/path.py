r"""Priors on Gaussian probability paths: diffusion and flow matching, one abstraction."""

from __future__ import annotations

__all__ = ["DiffusionPrior", "FlowMatchingPrior", "PathPrior", "ode_log_prob"]

import abc
import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from zuko.utils import odeint

from .._gaussian import normal_log_prob
from .base import Prior
from .counting import count_evaluation
from .diffusers import DiffusersDenoiser, DiscreteSchedule, denoiser_config, diffusers_parts
from .encoding import network_config, prefixed, schedule_config
from .samplers import sample_path
from .schedules import RectifiedSchedule, Schedule, VPSchedule, build_schedule
from .training import fit_path_prior

PREDICTIONS = ("denoiser", "noise", "velocity")


def _divergence(v: Tensor, x: Tensor, event_dim: int, probe: Tensor | None, create_graph: bool):
    r"""Divergence :math:`\nabla \cdot v` per batch element: exact (one backward pass per
    coordinate) when ``probe`` is None, else Hutchinson's :math:`z^\top (\partial v/\partial x)
    z`."""
    if probe is not None:
        (vjp,) = torch.autograd.grad(v, x, probe, create_graph=create_graph)
        return (vjp * probe).flatten(x.dim() - event_dim).sum(-1)
    flat_v = v.flatten(x.dim() - event_dim)
    div = torch.zeros(flat_v.shape[:-1], dtype=v.dtype, device=v.device)
    for i in range(flat_v.shape[-1]):
        (grad,) = torch.autograd.grad(
            flat_v[..., i].sum(), x, create_graph=create_graph, retain_graph=True
        )
        div = div + grad.flatten(x.dim() - event_dim)[..., i]
    return div


def ode_log_prob(
    velocity: Callable[[Tensor, Tensor], Tensor],
    schedule: Schedule,
    x: Tensor,
    event_dim: int,
    *,
    exact_divergence: bool = True,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    parameters: Sequence[Tensor] = (),
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Log-density of a path model through its probability-flow ODE (instantaneous change of
    variables):

    .. math:: \log p_{t_\text{min}}(x) = \log \mathcal{N}(x_1; 0, \sigma_1^2 I)
        + \int_{t_\text{min}}^1 \nabla \cdot v(x_t, t) \, dt, \quad
        \frac{dx_t}{dt} = v(x_t, t), \ x_{t_\text{min}} = x.

    The ODE is solved by zuko's adaptive Dormand-Prince ``odeint``, whose adjoint gives
    gradients with respect to ``x`` and ``parameters``. With ``exact_divergence=False``, the
    divergence is Hutchinson's unbiased estimate :math:`z^\top (\partial v / \partial x) z` with
    one Rademacher probe :math:`z` per draw, held fixed along the trajectory: the log-density
    is then unbiased but noisy, with variance :math:`2 \|\partial v/\partial x\|_F^2`
    (symmetric part) integrated along the path.

    Arguments:
        velocity: :math:`v(x_t, t)` with ``t`` shaped like the batch.
        schedule: The path (gives :math:`t_\text{min}` and :math:`\sigma_1`).
        x: Points shaped ``[*batch, *event]``.
        event_dim: The number of event dimensions.
        exact_divergence: Exact divergence by autograd, or Hutchinson's estimator.
        atol, rtol: Tolerances of the ODE solver.
        parameters: Tensors the velocity depends on, for gradients through the adjoint.
        generator: Random generator of the Hutchinson probes.

    Returns:
        The log-densities, shaped ``batch``.

    References:
        | FFJORD (Grathwohl et al., 2019)
        | https://arxiv.org/abs/1810.01367
    """
    batch = x.shape[: x.dim() - event_dim]
    probe = None
    if not exact_divergence:
        probe = torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x) * 2 - 1

    def f(t: Tensor, x_t: Tensor, _: Tensor) -> tuple[Tensor, Tensor]:
        backward = torch.is_grad_enabled()  # True inside the adjoint pass
        with torch.enable_grad():
            if not backward:  # the forward pass hands views that may not be in a graph
                x_t = x_t.detach().requires_grad_()
            v = velocity(x_t, t.expand(batch))
            div = _divergence(v, x_t, event_dim, probe, create_graph=backward)
        if not backward:
            v, div = v.detach(), div.detach()
        return v, div

    t_min = max(schedule.t_min, 1e-5)
    zero = torch.zeros(batch, dtype=x.dtype, device=x.device)
    x1, integral = odeint(f, (x, zero), t_min, 1.0, phi=tuple(parameters), atol=atol, rtol=rtol)
    _, sigma1 = schedule(torch.ones((), dtype=x.dtype, device=x.device))
    return normal_log_prob(x1, 0.0, sigma1, batch_dims=x.dim() - event_dim) + integral


class PathPrior(Prior):
    r"""A prior defined by a Gaussian probability path and its denoiser.

    Along the path :math:`x_t = \alpha_t x + \sigma_t \epsilon` (see :class:`Schedule`), the
    model is known through its denoiser :math:`D(x_t, t) \approx E[x \mid x_t]`; the score,
    the noise and the probability-flow velocity follow from it, so that every sampler and
    every guidance method is written once, against :meth:`denoise`.

    Subclasses implement :meth:`denoise` (returning its result through
    :func:`~condgen.priors.counting.count_evaluation`, so that an active
    :class:`~condgen.priors.counting.EvaluationCounter` counts it) and :meth:`_device_dtype`.

    Arguments:
        schedule: The path: a :class:`Schedule` or a name (``"vp"``, ``"ve"``, ``"cosine"``,
            ``"rectified"``).
        event_shape: The shape of one draw.
        sampler: Default sampler of :meth:`sample` (``"heun"``, ``"euler"``, ``"ddim"``,
            ``"ddpm"``).
        steps: Default number of sampler steps.
        exact_divergence: Whether :meth:`log_prob` uses the exact divergence; by default when
            the event has at most 16 coordinates, else Hutchinson's estimator.
    """

    def __init__(
        self,
        schedule: Schedule | str,
        event_shape: torch.Size | tuple[int, ...],
        sampler: str = "heun",
        steps: int = 64,
        exact_divergence: bool | None = None,
    ):
        super().__init__(event_shape)
        self.schedule = build_schedule(schedule)
        self.sampler, self.steps = sampler, steps
        if exact_divergence is None:
            exact_divergence = math.prod(self.event_shape) <= 16
        self.exact_divergence = exact_divergence

    @property
    def event_dim(self) -> int:
        return len(self.event_shape)

    @abc.abstractmethod
    def denoise(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        r"""The denoiser :math:`D(x_t, t) = E[x \mid x_t]`.

        Arguments:
            x_t: Noisy points shaped ``[*batch, *event]``.
            t: Times in :math:`[0, 1]`, shaped ``batch`` or scalar.
        """

    @abc.abstractmethod
    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        r"""The device and dtype that draws are made on."""

    def _times(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        self._check_event(x_t, "x_t")
        batch = x_t.shape[: x_t.dim() - self.event_dim]
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device)
        try:
            return t.expand(batch)
        except RuntimeError:
            raise ValueError(
                f"t has shape {tuple(t.shape)}, which does not broadcast to the batch shape "
                f"{tuple(batch)} of x_t"
            ) from None

    def score(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        r"""The score :math:`\nabla_{x_t} \log p_t(x_t) = (\alpha_t D - x_t) / \sigma_t^2`."""
        t = self._times(x_t, t)
        return self.schedule.score(x_t, self.denoise(x_t, t), t, self.event_dim)

    def velocity(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        r"""The probability-flow velocity :math:`dx_t/dt` (see :class:`Schedule`)."""
        t = self._times(x_t, t)
        return self.schedule.velocity(x_t, self.denoise(x_t, t), t, self.event_dim)

    def sample(
        self,
        sample_shape: torch.Size | tuple[int, ...] = (),
        *,
        sampler: str | None = None,
        steps: int | None = None,
        eta: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        r"""Draws with a fixed-step sampler (see :func:`~condgen.priors.samplers.sample_path`),
        without building an autograd graph. ``sampler`` and ``steps`` override the defaults.
        """
        device, dtype = self._device_dtype()
        shape = torch.Size(sample_shape) + self.batch_shape + self.event_shape
        return sample_path(
            self.denoise,
            self.schedule,
            shape,
            self.event_dim,
            sampler=self.sampler if sampler is None else sampler,
            steps=self.steps if steps is None else steps,
            eta=eta,
            generator=generator,
            device=device,
            dtype=dtype,
        )

    def log_prob(self, x: Tensor, **options: Any) -> Tensor:
        r"""Log-density through the probability-flow ODE (see :func:`ode_log_prob`; options
        such as ``atol``, ``rtol`` or ``exact_divergence`` go to it). Slow: each call solves
        an ODE with an adaptive solver."""
        self._check_event(x)
        options.setdefault("exact_divergence", self.exact_divergence)
        return ode_log_prob(
            self.velocity,
            self.schedule,
            x,
            self.event_dim,
            parameters=self._parameters(),
            **options,
        )

    def moments(self, num_samples: int = 1024, **sampler_options: Any) -> tuple[Tensor, Tensor]:
        r"""The mean and covariance of the prior over the flattened event, estimated from
        ``num_samples`` draws of :meth:`sample` with ``sampler_options`` (e.g. ``sampler``,
        ``steps``; a subclass with closed forms overrides this).

        Returns:
            The mean, shaped ``[d]``, and the covariance, shaped ``[d, d]``, with
            :math:`d` the number of event coordinates.
        """
        with torch.no_grad():
            draws = self.sample((num_samples,), **sampler_options).reshape(num_samples, -1)
        return draws.mean(0), torch.cov(draws.T).reshape(draws.shape[1], draws.shape[1])

    def _parameters(self) -> tuple[Tensor, ...]:
        return ()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(event_shape={tuple(self.event_shape)}, "
            f"schedule={self.schedule})"
        )


class DiffusionPrior(PathPrior):
    r"""A diffusion prior: a network that denoises along a Gaussian path.

    The network is any ``nn.Module`` (or callable) ``network(x_t, t)`` or, for conditional
    priors, ``network(x_t, t, context)``. Its output is read according to ``prediction``:
    the denoiser :math:`D(x_t, t)` itself, the noise :math:`\hat\epsilon`, or the velocity
    :math:`v`; all are converted to :math:`D` (see :class:`Schedule`). It is trained by
    :meth:`fit` on samples with the denoising loss
    :math:`E_{t, x, \epsilon} \, w_t \|D(\alpha_t x + \sigma_t \epsilon, t) - x\|^2`.

    Arguments:
        denoiser: The network.
        schedule: The path (default :class:`VPSchedule`).
        event_shape: The shape of one draw.
        prediction: What the network predicts: ``"denoiser"``, ``"noise"`` or ``"velocity"``.
        context: A context bound to the prior (see :meth:`given`), or None.
        sampler, steps, exact_divergence: See :class:`PathPrior`.

    Example:
        >>> import pyro, torch
        >>> from condgen.priors import MLP, DiffusionPrior
        >>> data = torch.randn(500, 2) * 0.5 + 1.0
        >>> prior = DiffusionPrior(MLP(2, hidden=(32, 32)), event_shape=(2,), steps=8)
        >>> losses = prior.fit(data, steps=50, progress=False)  # e.g. steps=2000 to fit
        >>> x = pyro.sample("x", prior)
        >>> x.shape
        torch.Size([2])

    References:
        | Denoising Diffusion Probabilistic Models (Ho et al., 2020)
        | https://arxiv.org/abs/2006.11239

        | Elucidating the Design Space of Diffusion-Based Generative Models (Karras et al., 2022)
        | https://arxiv.org/abs/2206.00364
    """

    def __init__(
        self,
        denoiser: nn.Module | Callable,
        schedule: Schedule | str | None = None,
        event_shape: torch.Size | tuple[int, ...] = (),
        prediction: str = "denoiser",
        context: Tensor | None = None,
        sampler: str = "heun",
        steps: int = 64,
        exact_divergence: bool | None = None,
    ):
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; use one of {PREDICTIONS}")
        if not event_shape:
            raise ValueError("event_shape is required, e.g. event_shape=(2,) for 2-D data")
        super().__init__(
            schedule if schedule is not None else VPSchedule(),
            event_shape,
            sampler=sampler,
            steps=steps,
            exact_divergence=exact_divergence,
        )
        self.network = denoiser
        self.prediction = prediction
        self.context = context

    @classmethod
    def from_diffusers(
        cls,
        unet: nn.Module,
        scheduler: Any,
        event_shape: torch.Size | tuple[int, ...] | None = None,
        **options: Any,
    ) -> DiffusionPrior:
        r"""A pretrained diffusers model as a prior (needs ``pip install condgen[diffusers]``).

        The scheduler's ``alphas_cumprod`` becomes a
        :class:`~condgen.priors.diffusers.DiscreteSchedule` (the log-SNR interpolated between
        timesteps, :math:`t = \tau / (T - 1)`) and the UNet a
        :class:`~condgen.priors.diffusers.DiffusersDenoiser` that reads its
        ``prediction_type`` (``"epsilon"``, ``"v_prediction"`` or ``"sample"``). On the integer
        timesteps of the scheduler's grid, condgen's DDIM is diffusers' DDIM, and its DDPM
        (``"ddpm"``, DDIM with :math:`\eta = 1`) diffusers' ``DDPMScheduler`` (variance
        ``"fixed_small"``) without clipping.

        :meth:`save` writes the prior in condgen's file format: the UNet's class name and its
        ``config``, the prediction type, ``alphas_cumprod`` and the weights; loading it
        (:func:`condgen.priors.load`) needs diffusers too.

        Arguments:
            unet: The network, called as ``unet(x, timestep).sample``.
            scheduler: The diffusers scheduler it was trained with (e.g. ``DDPMScheduler``).
            event_shape: The shape of one draw; by default ``[C, H, W]`` from ``unet.config``
                (``in_channels``, ``sample_size``).
            options: Keyword options of :class:`DiffusionPrior` (``sampler``, ``steps``...).

        Example:
            >>> from diffusers import DDPMScheduler, UNet2DModel  # doctest: +SKIP
            >>> name = "google/ddpm-cifar10-32"  # doctest: +SKIP
            >>> unet = UNet2DModel.from_pretrained(name)  # doctest: +SKIP
            >>> scheduler = DDPMScheduler.from_pretrained(name)  # doctest: +SKIP
            >>> prior = DiffusionPrior.from_diffusers(unet, scheduler, steps=50)  # doctest: +SKIP
            >>> prior.event_shape  # doctest: +SKIP
            torch.Size([3, 32, 32])
        """
        denoiser, schedule, event_shape = diffusers_parts(unet, scheduler, event_shape)
        return cls(denoiser, schedule, event_shape, prediction="denoiser", **options)

    def _encode(self) -> tuple[dict, dict]:
        config, state = network_config(self)
        config["prediction"] = self.prediction
        if not isinstance(self.network, DiffusersDenoiser):
            config["schedule"] = schedule_config(self.schedule)
            return config, state
        # a diffusers prior: its schedule is the denoiser's, saved with it as alphas_cumprod
        network = self.network
        if not (
            isinstance(self.schedule, DiscreteSchedule)
            and self.schedule.alphas_cumprod == network.schedule.alphas_cumprod
        ):
            raise TypeError(
                f"cannot save a DiffusionPrior whose schedule {self.schedule!r} is not the one "
                "of its diffusers denoiser; build it with DiffusionPrior.from_diffusers"
            )
        entry, tensors = denoiser_config(network)
        config["network"], config["schedule"] = entry, {"name": type(self.schedule).__name__}
        state.update(prefixed("network", tensors))
        return config, state

    def denoise(self, x_t: Tensor, t: Tensor | float, context: Tensor | None = None) -> Tensor:
        r"""The denoiser :math:`D(x_t, t)`, or :math:`D(x_t, t, c)` for a conditional prior
        (``context`` overrides the bound one; None is the unconditional model)."""
        t = self._times(x_t, t)
        context = self.context if context is None else context
        output = self.network(x_t, t) if context is None else self.network(x_t, t, context)
        if self.prediction == "noise":
            output = self.schedule.denoiser_from_noise(x_t, output, t, self.event_dim)
        elif self.prediction == "velocity":
            output = self.schedule.denoiser_from_velocity(x_t, output, t, self.event_dim)
        return count_evaluation(output, self.event_dim)

    def fit(self, data: Tensor, **options: Any) -> list[float]:
        r"""Trains the network on samples of the data distribution by denoising score matching
        (see :func:`~condgen.priors.training.fit_path_prior`).

        Each step draws :math:`t \sim \mathcal{U}(t_\text{min}, 1)` and
        :math:`\epsilon \sim \mathcal{N}(0, I)`, forms :math:`x_t = \alpha_t x + \sigma_t
        \epsilon` and regresses the raw network output on the target of its parametrisation:
        :math:`x` with the weight :math:`1 + \min(\alpha_t^2/\sigma_t^2, 100)` for the denoiser,
        :math:`\epsilon` for the noise, :math:`\dot\alpha_t x + \dot\sigma_t \epsilon`
        (:math:`\epsilon - x` for flow matching) for the velocity. At the end, the network
        holds the exponential moving average of its weights.

        Arguments:
            data: Samples shaped ``[N, *event_shape]``; the network moves to their device and
                dtype.
            options: Keyword options of
                :func:`~condgen.priors.training.fit_path_prior`: ``context`` (one row per
                sample) and ``context_dropout`` for a conditional prior, ``steps``,
                ``batch_size``, ``lr``, ``weight_decay``, ``ema``, ``clip``, ``progress``,
                ``generator``, ``checkpoint``, ``every``, and ``autocast=torch.bfloat16`` for
                mixed-precision training (on CUDA, where it pays).

        Returns:
            The loss of every step.

        Example:
            >>> import torch
            >>> from condgen.priors import MLP, DiffusionPrior, FlowMatchingPrior
            >>> data, labels = torch.randn(500, 2), torch.randn(500, 3)
            >>> prior = DiffusionPrior(MLP(2, hidden=(32, 32)), event_shape=(2,))
            >>> losses = prior.fit(data, steps=20, progress=False)  # e.g. steps=5000 to fit
            >>> len(losses)
            20
            >>> conditional = FlowMatchingPrior(MLP(2, context=3, hidden=(32, 32)),
            ...                                 event_shape=(2,), steps=8)
            >>> losses = conditional.fit(data, context=labels, context_dropout=0.1, steps=20,
            ...                          progress=False)
            >>> conditional.given(labels[0]).sample((100,)).shape
            torch.Size([100, 2])
        """
        return fit_path_prior(self, data, **options)

    def given(self, context: Tensor) -> DiffusionPrior:
        r"""The conditional prior :math:`p(x \mid c)` as a distribution sharing the network.

        Arguments:
            context: The context :math:`c`, broadcast against the draws by the network.
        """
        conditional = copy.copy(self)
        conditional.context = context
        return conditional

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        for p in self._parameters():
            return p.device, p.dtype
        return torch.device("cpu"), torch.get_default_dtype()

    def _parameters(self) -> tuple[Tensor, ...]:
        if isinstance(self.network, nn.Module):
            return tuple(p for p in self.network.parameters() if p.requires_grad)
        return ()


class FlowMatchingPrior(DiffusionPrior):
    r"""A flow-matching prior: a velocity network on the rectified path
    :math:`x_t = (1 - t) x + t \epsilon`, trained with the conditional flow-matching loss
    :math:`E \|v(x_t, t) - (\epsilon - x)\|^2`. It shares :meth:`denoise`, :meth:`score`, the
    samplers and the ODE likelihood with :class:`DiffusionPrior`, through
    :math:`D = x_t - t\, v`.

    Arguments:
        velocity_net: The network ``velocity_net(x_t, t)`` (or with a context).
        event_shape: The shape of one draw.
        context, sampler, steps, exact_divergence: See :class:`DiffusionPrior`.

    References:
        | Flow Matching for Generative Modeling (Lipman et al., 2023)
        | https://arxiv.org/abs/2210.02747
    """

    def __init__(
        self,
        velocity_net: nn.Module | Callable,
        event_shape: torch.Size | tuple[int, ...] = (),
        context: Tensor | None = None,
        sampler: str = "heun",
        steps: int = 32,
        exact_divergence: bool | None = None,
    ):
        super().__init__(
            velocity_net,
            RectifiedSchedule(),
            event_shape,
            prediction="velocity",
            context=context,
            sampler=sampler,
            steps=steps,
            exact_divergence=exact_divergence,
        )

    def _encode(self) -> tuple[dict, dict]:
        return network_config(self)  # the schedule and prediction are fixed
