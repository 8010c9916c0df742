r"""The shared base of the posterior estimators that are conditional path priors: FMPE and
NPSE."""

from __future__ import annotations

__all__ = ["PathEstimator"]

import abc
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..priors.counting import EvaluationCounter
from ..priors.nets import MLP
from ..priors.path import DiffusionPrior
from ..priors.samplers import SAMPLERS
from ..priors.training import path_loss
from .estimator import PosteriorEstimator


class PathEstimator(PosteriorEstimator):
    r"""A posterior estimator that is a conditional path prior :math:`p_\phi(u \mid c)` of
    :mod:`condgen.priors` (the shared base of :class:`~condgen.infer.FMPE` and
    :class:`~condgen.infer.NPSE`).

    Along the Gaussian path :math:`u_t = \alpha_t u + \sigma_t \epsilon` of standardised
    unconstrained latents :math:`u` (see :class:`~condgen.amortized.PosteriorEstimator`),
    a residual :class:`~condgen.priors.nets.MLP` :math:`v_\phi(u_t, t, c)`, whose context
    :math:`c` is the standardised (optionally embedded) observation, is regressed on the
    conditional velocity :math:`\dot\alpha_t u + \dot\sigma_t \epsilon`; its minimiser is the
    probability-flow velocity of :math:`p_t(u_t \mid c)`, from which the denoiser and the
    score follow (see :class:`~condgen.priors.Schedule`). Times are drawn as
    :math:`t = t_\text{min} + (1 - t_\text{min}) \, w^{k}`, :math:`w \sim \mathcal{U}(0, 1)`,
    with density :math:`\propto (t - t_\text{min})^{1/k - 1}`: ``time_power`` :math:`k > 1`
    favours the data end :math:`t \to 0`, where the thin features of a posterior are made.

    Draws integrate the probability-flow ODE from :math:`t = 1` with the priors' samplers
    (Heun by default); :meth:`log_prob` solves the same ODE with an adaptive solver and the
    instantaneous change of variables (:func:`~condgen.priors.ode_log_prob`), then adds the
    standardisation and the unconstrained map's Jacobian. Both are deterministic functions of
    the network, but approximate ones: the draws carry the sampler's discretisation error,
    and the log-density is that of the ODE's flow, which equals the model's marginal only
    when the network is exact.

    Arguments:
        model, observed, embedding, args, kwargs: See
            :class:`~condgen.amortized.PosteriorEstimator`.
        hidden: The widths of the MLP's hidden layers (default in :attr:`path_defaults`).
        time_embedding: The number of sinusoidal time features of the MLP (and the size of
            its context embedding).
        sampler: The sampler of :meth:`sample`: ``"heun"``, ``"euler"``, ``"ddim"`` or
            ``"ddpm"``.
        steps: The number of sampler steps.
        time_power: The exponent :math:`k` of the time distribution.
    """

    path_defaults: ClassVar[dict[str, Any]]
    r"""The defaults of ``hidden``, ``steps`` and ``time_power``."""
    fit_defaults: ClassVar[dict[str, Any]] = {
        "max_epochs": 1000,
        "batch_size": "auto",
        "lr": 1e-3,
        "patience": 60,
        "lr_decay": 0.5,
        "ema": 0.995,
        "clip": 1.0,
    }
    r"""As for every estimator (see
    :attr:`~condgen.amortized.PosteriorEstimator.fit_defaults`), with a longer patience: the
    path losses are noisy (a random time and noise per simulation), and with 30 epochs FMPE and
    NPSE stopped early on the Gaussian-mixture task (C2ST 0.74 and 0.73 at 10,000 simulations,
    against 0.61 and 0.63 trained longer; docs/benchmarks.md, "Defaults of the amortized
    estimators")."""
    largest_batch: ClassVar[int] = 256
    truncation_defaults: ClassVar[dict[str, Any]] = {
        "draws": 1000,
        "oversampling": 10,
        "log_prob": {"atol": 1e-3, "rtol": 1e-2},
    }
    r"""As for every estimator (see
    :attr:`~condgen.amortized.PosteriorEstimator.truncation_defaults`), with fewer draws and
    candidates, and looser ODE tolerances: the truncation of sequential rounds solves one
    probability-flow ODE per draw and candidate (about 0.5 ms a draw in 2 dimensions and 2 to
    3 ms in 10 on one CPU thread at these tolerances, 5 to 20 ms at those of :meth:`log_prob`;
    the log-density moves by about 0.2)."""

    def __init__(
        self,
        model: Callable,
        observed: Sequence[str] | str | None = None,
        *,
        embedding: nn.Module | None = None,
        hidden: Sequence[int] | None = None,
        time_embedding: int = 64,
        sampler: str = "heun",
        steps: int | None = None,
        time_power: float | None = None,
        args: tuple = (),
        kwargs: Mapping[str, Any] | None = None,
    ):
        hidden = self.path_defaults["hidden"] if hidden is None else hidden
        steps = self.path_defaults["steps"] if steps is None else steps
        time_power = self.path_defaults["time_power"] if time_power is None else time_power
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; use one of {list(SAMPLERS)}")
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        if not time_power > 0:
            raise ValueError(f"time_power must be positive, got {time_power!r}")
        super().__init__(model, observed, embedding=embedding, args=args, kwargs=kwargs)
        self.network = MLP(
            self.latent_features,
            context=self._context_features(),
            hidden=hidden,
            time_embedding=time_embedding,
        )
        self.prior = self._prior(self.network, sampler, steps)
        self.time_power = float(time_power)
        self._nfe: int | float | None = None  # counted by _sample
        self.eval()

    @abc.abstractmethod
    def _prior(self, network: nn.Module, sampler: str, steps: int) -> DiffusionPrior:
        r"""The conditional path prior around the network."""

    @property
    def nfe(self) -> int | float:
        r"""The network evaluations per draw, as an
        :class:`~condgen.priors.counting.EvaluationCounter` counted them in the last call of
        :meth:`sample` (before any, in one draw at a zero observation)."""
        if self._nfe is None:
            x = torch.zeros_like(self.observation_loc)
            generator = torch.Generator(x.device).manual_seed(0)
            with torch.no_grad():
                self._sample(self._embed(x), 1, generator)
        return self._nfe

    def _loss(
        self, u: Tensor, context: Tensor, generator: torch.Generator | None, shard: slice
    ) -> Tensor:
        schedule = self.prior.schedule
        options = {"generator": generator, "device": u.device, "dtype": u.dtype}
        t_min = max(schedule.t_min, 1e-5)
        t = t_min + (1 - t_min) * torch.rand(len(u), **options) ** self.time_power
        eps = torch.randn(u.shape, **options)
        network = partial(self.network, context=context)
        return path_loss(schedule, self.prior.prediction, network, u[shard], t[shard], eps[shard])

    def _sample(
        self, context: Tensor, num_samples: int, generator: torch.Generator | None = None
    ) -> Tensor:
        with EvaluationCounter() as counter:
            u = self.prior.given(context).sample((num_samples,), generator=generator)
        self._nfe = counter.per_particle(num_samples)["nfe"]
        return u

    def _log_prob(self, u: Tensor, context: Tensor, **options: Any) -> Tensor:
        return self.prior.given(context).log_prob(u, **options)

    def _network_config(self) -> dict[str, Any]:
        return {
            "network": dict(self.network.config),
            "sampler": self.prior.sampler,
            "steps": self.prior.steps,
            "time_power": self.time_power,
        }

    @classmethod
    def _network_options(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        network = config["network"]
        return {
            "hidden": list(network["hidden"]),
            "time_embedding": network["time_embedding"],
            "sampler": config["sampler"],
            "steps": config["steps"],
            "time_power": config["time_power"],
        }

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, hidden={self.network.config['hidden']}, "
            f"sampler={self.prior.sampler!r}, steps={self.prior.steps}"
        )
