r"""Shared machinery of the methods that sample along a neural prior's Gaussian path."""

from __future__ import annotations

__all__ = ["GuidedSampler", "PathMethod", "PathSetup", "ancestral_step"]

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm import tqdm

from .._gaussian import normal_log_prob
from ..likelihoods import LinearGaussian, detect_linear_gaussian
from ..posterior import Posterior
from ..priors.counting import EvaluationCounter
from ..priors.path import PathPrior
from ..priors.samplers import (
    PathStep,
    Step,
    ancestral_step,
    check_sampler,
    integrate,
    make_sampler,
    time_grid,
)
from ..problem import Problem
from .base import Method


@dataclass
class PathSetup:
    r"""What a path method needs from a problem: the neural site, its prior, and the
    likelihood.

    The likelihood comes from the Pyro model (:meth:`Problem.likelihood_terms`, one trace per
    call). When the model's observation is linear-Gaussian (detected by probing it, then
    checked against the traced likelihood at random points), a closed form with the same
    values replaces the trace, which is several times cheaper per step.

    ``fixed`` holds values of the model's other latent sites (each shaped like its site): the
    likelihood is then :math:`p(y \mid x, \theta)` at those values, as a Gibbs sampler needs.
    """

    problem: Problem
    site: str
    prior: PathPrior
    shape: torch.Size  # the site's shape, batch (plate) dimensions included
    linear: LinearGaussian | None = None
    y: Tensor | None = None
    unconditional: PathPrior | None = None  # classifier-free guidance: the prior given None
    fixed: Mapping[str, Tensor] = field(default_factory=dict)

    def values(self, x0: Tensor) -> dict[str, Tensor]:
        r"""Latent values of the model for particles ``x0`` of the neural site: the fixed
        values of the other sites are repeated for every particle."""
        others = {k: v.expand(len(x0), *v.shape) for k, v in self.fixed.items()}
        return {self.site: x0, **others}

    def likelihood_terms(self, x0: Tensor) -> tuple[Tensor, Tensor]:
        r""":math:`\log p(y \mid x)` and the standardised residual norm, per particle;
        differentiable in x."""
        if self.linear is None:
            return self.problem.likelihood_terms(self.values(x0))
        mean = x0.reshape(len(x0), -1) @ self.linear.A.T + self.linear.b
        log_lik = normal_log_prob(self.y, mean, self.linear.sigma)
        return log_lik, ((self.y - mean) / self.linear.sigma).norm(dim=-1)

    def log_likelihood(self, x0: Tensor) -> Tensor:
        r""":math:`\log p(y \mid x)` per particle; differentiable in x. Unlike
        :meth:`likelihood_terms`, it needs no mean or variance of the observation."""
        if self.linear is None:
            return self.problem.log_likelihood(self.values(x0))
        return self.likelihood_terms(x0)[0]

    def detect_linear(self) -> None:
        r"""Switches to the closed form if the observation is linear-Gaussian and the closed
        form reproduces the traced likelihood (masks, scales and other sites would not)."""
        try:
            linear, obs = detect_linear_gaussian(
                self.problem, self.site, "closed form", self.fixed
            )
        except ValueError:
            return
        if not bool((linear.sigma > 0).all()):
            return
        generator = torch.Generator().manual_seed(1)
        points = torch.randn(3, *self.shape, generator=generator).to(
            self.problem.observations[obs]
        )
        with torch.no_grad():
            traced = self.problem.likelihood_terms(self.values(points))
            self.linear = linear
            self.y = self.problem.observations[obs].reshape(-1).to(linear.A)
            closed = self.likelihood_terms(points)
        pairs = zip(traced, closed, strict=True)
        if not all(torch.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in pairs):
            self.linear, self.y = None, None


class PathMethod(Method):
    r"""Base of the methods that integrate a path prior from noise to data, guided or
    weighted by the observations.

    The model must have one latent site, whose distribution is a condgen path prior
    (:class:`~condgen.priors.DiffusionPrior`, :class:`~condgen.priors.FlowMatchingPrior` or
    :class:`~condgen.priors.GaussianMixturePrior`); other latent sites are an error naming them
    (use ``"gibbs"`` or ``"nuts"``), unless :meth:`setup` is given their values. Draws are
    made in batches of ``batch_size`` particles, so memory stays bounded, by the one sampler
    loop :func:`~condgen.priors.samplers.integrate` running the method's :meth:`step`; a step
    that produces non-finite values stops with an error naming the method, the step and the
    option to change. Statistics a step reports (e.g. DPS's residual) come back per step as
    ``stats["<name>_trace"]``, averaged over batches; ``stats["nfe"]`` and ``stats["vjp"]`` are
    the denoiser evaluations and the vector-Jacobian products through them per particle, as an
    :class:`~condgen.priors.counting.EvaluationCounter` counts them over the whole run.

    Arguments:
        steps: The number of steps from :math:`t = 1` to :math:`t_\text{min}`.
        batch_size: Particles processed at once.
    """

    #: The option to change when a step produces non-finite values.
    unstable_option = "steps"

    def __init__(self, steps: int = 100, batch_size: int = 1024):
        if steps < 1 or batch_size < 1:
            raise ValueError("steps and batch_size must be positive integers")
        self.steps, self.batch_size = steps, batch_size

    def setup(self, problem: Problem, fixed: Mapping[str, Tensor] | None = None) -> PathSetup:
        r"""Finds the neural site and its path prior, or raises a clear error.

        Arguments:
            problem: The model and its observations.
            fixed: Values of the model's other latent sites (for a Gibbs sampler); without
                them a model with other latent sites is refused.
        """
        fixed = dict(fixed or {})
        neural = [n for n, s in problem.latent_sites.items() if s.neural]
        others = [n for n, s in problem.latent_sites.items() if not s.neural and n not in fixed]
        if not neural:
            raise ValueError(
                f"method '{self.name}' needs a latent site with a condgen path prior "
                f"(DiffusionPrior, FlowMatchingPrior, GaussianMixturePrior); the latent sites "
                f"{list(problem.latent_sites)} have none; use method='nuts'"
            )
        if len(neural) > 1:
            raise ValueError(
                f"method '{self.name}' conditions one neural site, but the model has the neural "
                f"sites {neural}; use method='nuts', which samples all sites jointly"
            )
        if others:
            raise ValueError(
                f"method '{self.name}' conditions the neural site '{neural[0]}' alone, but the "
                f"model also has the latent sites {others}; use method='gibbs', which "
                "alternates this sampler with NUTS on those sites, or method='nuts'"
            )
        site = problem.latent_sites[neural[0]]
        prior = site.base
        if not isinstance(prior, PathPrior):
            raise ValueError(
                f"method '{self.name}' needs a path prior (with denoise) at site '{site.name}', "
                f"got {type(prior).__name__}; use method='nuts' for priors with a log_prob"
            )
        setup = PathSetup(problem, site.name, prior, site.shape, fixed=fixed)
        setup.detect_linear()
        return setup

    def grid(self, setup: PathSetup) -> Tensor:
        problem = setup.problem
        return time_grid(
            setup.prior.schedule, self.steps, device=problem.device, dtype=problem.dtype
        )

    def initial(self, setup: PathSetup, num_particles: int) -> Tensor:
        r""":math:`x_1 \sim \mathcal{N}(0, \sigma_1^2 I)`."""
        problem = setup.problem
        one = torch.ones((), device=problem.device, dtype=problem.dtype)
        _, sigma = setup.prior.schedule(one)
        x = torch.randn(num_particles, *setup.shape, device=problem.device, dtype=problem.dtype)
        return sigma * x

    def unstable(self, i: int, t: Tensor) -> FloatingPointError:
        r"""The error of a step that produced non-finite values."""
        return FloatingPointError(
            f"method '{self.name}' produced non-finite values at step {i} "
            f"(t={float(t):.4f}); change the option '{self.unstable_option}' (now "
            f"{getattr(self, self.unstable_option)!r}) or check the likelihood at that point"
        )

    def batches(self, num_samples: int) -> list[int]:
        r"""The particle counts of the batches that make ``num_samples`` draws."""
        return [
            min(self.batch_size, num_samples - i) for i in range(0, num_samples, self.batch_size)
        ]

    def run(self, problem: Problem, num_samples: int, progress: bool = True) -> Posterior:
        setup = self.setup(problem)
        sizes = self.batches(num_samples)
        results, traces = [], []
        bar = tqdm(total=self.steps * len(sizes), desc=self.name, disable=not progress)
        with EvaluationCounter() as counter, bar:
            for n in sizes:
                step, x = self.step(setup), self.initial(setup, n)
                with torch.no_grad():  # steps that differentiate enable gradients themselves
                    result, trace = integrate(
                        step, x, self.grid(setup), error=self.unstable, bar=bar
                    )
                results.append(result)
                traces.append(trace)
        stats = {
            **counter.per_particle(sum(sizes)),
            **{
                f"{key}_trace": torch.tensor([t[key] for t in traces]).mean(0).tolist()
                for key in traces[0]
            },
        }
        return self.posterior(setup, results, stats)

    def posterior(self, setup: PathSetup, results: list, stats: dict) -> Posterior:
        r"""The Posterior of the batches' results (by default, draws of the site)."""
        x = torch.cat(results).detach()
        return Posterior(
            setup.problem, {setup.site: x.unsqueeze(0)}, stats=stats, method=self.name
        )

    @abc.abstractmethod
    def step(self, setup: PathSetup) -> Step:
        r"""The step that moves a batch of this method's particles along :meth:`grid`."""


class GuidedSampler(PathMethod):
    r"""A sampler whose denoised estimate is corrected by guidance at every step, then moved
    by any path sampler of :data:`~condgen.priors.samplers.SAMPLERS` (``"ddpm"``, ancestral,
    by default; ``"ddim"``, ``"euler"`` or ``"heun"``, deterministic).

    Subclasses implement :meth:`guided_denoise`; a score guidance
    :math:`g = \nabla_{x_t} \log \tilde p(y \mid x_t)` enters through Tweedie's formula as
    :math:`D' = D + (\sigma_t^2 / \alpha_t)\, g`.

    Arguments:
        steps: The number of steps.
        eta: The stochasticity of ``"ddpm"``/``"ddim"`` (1 ancestral, 0 deterministic).
        batch_size: Particles processed at once.
        sampler: The sampler that moves the particles with the guided estimate.
    """

    def __init__(
        self,
        steps: int = 100,
        eta: float | None = None,
        batch_size: int = 1024,
        sampler: str = "ddpm",
    ):
        super().__init__(steps=steps, batch_size=batch_size)
        self.eta, self.sampler = eta, sampler
        check_sampler(sampler, eta)

    @abc.abstractmethod
    def guided_denoise(self, setup: PathSetup, x_t: Tensor, t: Tensor) -> Tensor:
        r"""The guided denoised estimate :math:`D'(x_t, t)`, detached."""

    def step(self, setup: PathSetup) -> PathStep:
        def denoise(x_t: Tensor, t: Tensor) -> Tensor:
            return self.guided_denoise(setup, x_t, t)

        return make_sampler(self.sampler, denoise, setup.prior.schedule, self.eta)
