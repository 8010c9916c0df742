r"""Objectives of semi-implicit guides: the SIVI bound and kernel semi-implicit VI."""

from __future__ import annotations

__all__ = ["SIVI_ELBO", "KernelSIVI"]

import abc
import math
from collections.abc import Callable
from typing import Any

import pyro.poutine as poutine
import torch
from pyro.infer import ELBO
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor

from .._particles import sum_per_particle, vectorized
from .latents import ImplicitLatent, SemiImplicitLatent

_PARTICLES = "_condgen_objective_particles"


class _ParticleObjective(ELBO):
    r"""The common part of the objectives: Pyro's loss interface (``loss`` and
    ``loss_and_grads`` of :class:`~pyro.infer.ELBO`, so that :class:`pyro.infer.SVI` calls
    them), and the guide and model traced together under one vectorised particle plate."""

    def __init__(self, num_particles: int, max_plate_nesting: float):
        if not (isinstance(num_particles, int) and num_particles >= 1):
            raise ValueError(f"num_particles must be a positive integer, got {num_particles!r}")
        if not max_plate_nesting >= 0:
            raise ValueError(f"max_plate_nesting must be >= 0, got {max_plate_nesting!r}")
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=True,
        )

    @abc.abstractmethod
    def _estimate(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> Tensor:
        r"""The loss (a differentiable scalar tensor); subclasses give it."""

    def _get_trace(self, model: Callable, guide: Callable, args: tuple, kwargs: dict):
        # Pyro's ELBO requires this hook for trace-by-trace objectives; these objectives trace
        # all particles in one batch in _estimate, so no caller reaches it.
        raise NotImplementedError(f"{type(self).__name__} traces its particles in one batch")

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        r"""Estimates the loss without gradients.

        Returns:
            The loss, a float.
        """
        with torch.no_grad():
            return self._checked(self._estimate(model, guide, args, kwargs))

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        r"""Estimates the loss and accumulates its gradients in the parameters of the model
        and the guide.

        Returns:
            The loss, a float.
        """
        loss = self._estimate(model, guide, args, kwargs)
        value = self._checked(loss)
        if loss.requires_grad:
            loss.backward()
        return value

    def _checked(self, loss: Tensor) -> float:
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(
                f"{type(self).__name__} became {value}: lower the learning rate, start the guide "
                "narrower (init_scale) or check the model for invalid parameter values"
            )
        return value

    # ---------------------------------------------------------------------------- traces

    def _traces(
        self,
        model: Callable,
        guide: Callable,
        args: tuple,
        kwargs: dict,
        num_particles: int | None = None,
        latent: dict[str, Tensor] | None = None,
    ) -> tuple[poutine.Trace, poutine.Trace]:
        r"""Traces the guide (its sites conditioned on ``latent``, if given) and the model
        replayed on it, under a particle plate left of the model's plates; computes the
        model's log-densities."""
        if math.isinf(self.max_plate_nesting):
            self.max_plate_nesting = _max_plate_nesting(model, guide, args, kwargs)
        num_particles = self.num_particles if num_particles is None else num_particles

        def particles(fn: Callable) -> Callable:
            return vectorized(fn, num_particles, self.max_plate_nesting, _PARTICLES)

        if latent is not None:
            guide = poutine.condition(guide, latent)
        guide_trace = poutine.trace(particles(guide)).get_trace(*args, **kwargs)
        replayed = poutine.replay(particles(model), trace=guide_trace)
        model_trace = poutine.trace(replayed).get_trace(*args, **kwargs)
        guide_trace = prune_subsample_sites(guide_trace)
        model_trace = prune_subsample_sites(model_trace)
        model_trace.compute_log_prob()
        return model_trace, guide_trace

    def _sum(self, trace: poutine.Trace, names: list[str], num_particles: int) -> Tensor:
        r"""The log-densities of the sites ``names``, summed per particle: ``[num_particles]``."""
        return sum_per_particle(trace, names, num_particles, int(self.max_plate_nesting))

    def _log_density(
        self,
        model_trace: poutine.Trace,
        guide_trace: poutine.Trace,
        num_particles: int,
        observed: bool = True,
    ) -> Tensor:
        r"""The model's log-density per particle in the guide's coordinates,
        :math:`\log p(x(u), y) + \log |\det J(u)|`, less the log-densities of the guide's
        ordinary sites (an amortized guide's global part): the guide's Delta sites carry the
        Jacobians. With ``observed=False``, the prior alone."""
        names = [
            n
            for n, s in model_trace.nodes.items()
            if s["type"] == "sample" and (observed or not s["is_observed"])
        ]
        guide_sites = [n for n, s in _sample_sites(guide_trace) if not _is_noise_site(s)]
        guide_trace.compute_log_prob(site_filter=lambda name, site: name in guide_sites)
        return self._sum(model_trace, names, num_particles) - self._sum(
            guide_trace, guide_sites, num_particles
        )

    @staticmethod
    def _noise_site(guide_trace: poutine.Trace, kind: type) -> dict:
        r"""The guide's one site of a semi-implicit or implicit latent."""
        found = [s for _, s in _sample_sites(guide_trace) if isinstance(s["fn"], kind)]
        if len(found) != 1:
            raise ValueError(
                f"the guide must have one site drawn from a {kind.__name__} (a "
                f"{kind.__name__.replace('Latent', 'Guide')}), found {len(found)}"
            )
        return found[0]


class SIVI_ELBO(_ParticleObjective):
    r"""The semi-implicit evidence lower bound of Yin and Zhou (2018), for guides whose
    latent is a :class:`~condgen.guides.SemiImplicitLatent` (e.g.
    :class:`~condgen.guides.SemiImplicitGuide`), vectorised over particles.

    With :math:`u = \mu(\psi_0) + \sigma(\psi_0) \odot \xi` a draw of the guide and
    :math:`\psi_1, \dots, \psi_K` fresh mixing draws (shared by the particles),

    .. math:: \underline{\mathcal{L}}_K = \mathbb{E}\Big[\log p(x(u), y)
        + \log |\det J(u)| - \log \frac{1}{K + 1} \sum_{k=0}^K
        \mathcal{N}\big(u \mid \mu(\psi_k), \sigma(\psi_k)^2\big)\Big],

    differentiated through the reparametrised draws. Its bias for finite :math:`K`: it is a
    lower bound of the ELBO, :math:`\underline{\mathcal{L}}_K \le \underline{\mathcal{L}}_{K+1}
    \le \mathcal{L} = \mathbb{E}_q[\log p(x, y) - \log q(u)]`, tight as :math:`K \to \infty`;
    the gap is :math:`\mathbb{E}[\log \hat q_K(u) - \log q(u)] \ge 0`, largest where the
    Gaussian layer is narrow relative to the spread of :math:`\mu(\psi)`, so that few inner
    draws land near :math:`u`: the bound then rewards inflating :math:`\sigma(\psi)`, which
    over-disperses the guide slightly. Including :math:`\psi_0` keeps the estimate finite and
    the bound valid for every :math:`K`. Other guide sites (e.g. an amortized guide's global
    part) enter with their own log-densities.

    Arguments:
        num_inner: The number :math:`K` of inner mixing draws.
        num_particles: The number of draws :math:`u` per estimate (vectorised).
        max_plate_nesting: The model's plate nesting (default: found by tracing once).

    Example:
        >>> import pyro
        >>> from condgen.evaluate import TargetDensity
        >>> from condgen.guides import SemiImplicitGuide
        >>> from condgen.guides.sivi import SIVI_ELBO
        >>> task = TargetDensity.x_shaped()  # an X: two crossed, correlated Gaussians
        >>> loss = SIVI_ELBO(num_inner=50, num_particles=8)
        >>> guide = SemiImplicitGuide(task.model, noise_dim=4)
        >>> svi = pyro.infer.SVI(task.model, guide, pyro.optim.Adam({"lr": 1e-2}), loss)
        >>> isinstance(svi.step(), float)  # the loss: an estimate of -ELBO
        True

    References:
        | Semi-Implicit Variational Inference (Yin et al., 2018)
        | https://arxiv.org/abs/1805.11183
    """

    def __init__(
        self, num_inner: int = 50, num_particles: int = 16, max_plate_nesting: float = math.inf
    ):
        if not (isinstance(num_inner, int) and num_inner >= 1):
            raise ValueError(f"num_inner must be a positive integer, got {num_inner!r}")
        super().__init__(num_particles, max_plate_nesting)
        self.num_inner = num_inner

    def _estimate(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> Tensor:
        model_trace, guide_trace = self._traces(model, guide, args, kwargs)
        site = self._noise_site(guide_trace, SemiImplicitLatent)
        log_q = site["fn"].log_prob(site["value"], num_inner=self.num_inner)
        site["log_prob"] = log_q * site["scale"]
        log_q = self._sum(guide_trace, [site["name"]], self.num_particles)
        elbo = self._log_density(model_trace, guide_trace, self.num_particles) - log_q
        return -elbo.mean()


class KernelSIVI(_ParticleObjective):
    r"""Kernel semi-implicit variational inference (Cheng et al., 2024): the kernel Stein
    discrepancy between a :class:`~condgen.guides.SemiImplicitGuide` and the posterior,
    estimated without the guide's density.

    In the guide's unconstrained space, with :math:`s_p(u) = \nabla_u [\log p(x(u), y) +
    \log |\det J(u)|]` (autograd of the model's log-joint with the ``biject_to`` Jacobian) and
    a Gaussian kernel :math:`k`,

    .. math:: \mathrm{KSD}^2(q \| p) = \mathbb{E}_{u, u' \sim q}\big[(s_p(u) - s_q(u))^\top
        k(u, u') (s_p(u') - s_q(u'))\big].

    The guide's score :math:`s_q` is intractable, but the expectation is unchanged when it is
    replaced by the Gaussian layer's conditional score, :math:`s_q(u \mid \psi) = -(u -
    \mu(\psi)) / \sigma(\psi)^2`, for the :math:`\psi` that drew :math:`u`. The U-statistic
    over :math:`N` particles,

    .. math:: \widehat{\mathrm{KSD}}^2 = \frac{1}{N (N - 1)} \sum_{i \ne j} (s_p(u_i) -
        s_q(u_i \mid \psi_i))^\top k(u_i, u_j) (s_p(u_j) - s_q(u_j \mid \psi_j)),

    is unbiased, and so are its reparametrised gradients: one loop, no inner draws. The
    bandwidth is the median heuristic, :math:`h^2 = \mathrm{med}_{i<j} \|u_i - u_j\|^2 /
    (2 \log(N + 1))`, :math:`k(u, u') = \exp(-\|u - u'\|^2 / (2 h^2))`, unless given.
    Like every score-based divergence, it sees the relative mass of well-separated modes only
    weakly. The loss is :math:`\widehat{\mathrm{KSD}}^2` (it can be slightly negative).

    Arguments:
        num_particles: The number :math:`N` of draws per estimate (vectorised; the cost is
            :math:`O(N^2 D)`).
        bandwidth: The kernel bandwidth :math:`h` (default the median heuristic).
        max_plate_nesting: The model's plate nesting (default: found by tracing once).

    Example:
        >>> import condgen, pyro
        >>> task = condgen.evaluate.Banana()
        >>> guide = condgen.guides.SemiImplicitGuide(task.model)
        >>> loss = condgen.guides.sivi.KernelSIVI(num_particles=128)
        >>> svi = pyro.infer.SVI(task.model, guide, pyro.optim.Adam({"lr": 1e-3}), loss)
        >>> svi.step() > -1.0  # the squared KSD, about 0 (slightly negative) at the posterior
        True

    References:
        | Kernel Semi-Implicit Variational Inference (Cheng et al., 2024)
        | https://arxiv.org/abs/2405.18997
    """

    def __init__(
        self,
        num_particles: int = 128,
        bandwidth: float | None = None,
        max_plate_nesting: float = math.inf,
    ):
        if bandwidth is not None and not bandwidth > 0:
            raise ValueError(f"bandwidth must be positive or None, got {bandwidth!r}")
        super().__init__(num_particles, max_plate_nesting)
        if num_particles < 2:
            raise ValueError(
                f"num_particles must be at least 2 for a U-statistic, got {num_particles}"
            )
        self.bandwidth = bandwidth

    def _estimate(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> Tensor:
        n, differentiable = self.num_particles, torch.is_grad_enabled()
        with torch.enable_grad():  # the model's score, also in loss()
            model_trace, guide_trace = self._traces(model, guide, args, kwargs)
            site = self._noise_site(guide_trace, SemiImplicitLatent)
            if site["value"].numel() != n * site["fn"].features:
                raise ValueError(
                    "KernelSIVI needs a guide of global latents (a SemiImplicitGuide without "
                    "encoder); train an amortized guide with SIVI_ELBO"
                )
            u = site["value"]
            log_p = self._log_density(model_trace, guide_trace, n)
            score_p = torch.autograd.grad(log_p.sum(), u, create_graph=differentiable)[0]
        diff = (score_p - site["fn"].conditional_score(u)).reshape(n, -1)
        u = u.reshape(n, -1)
        squared = (u.unsqueeze(1) - u).square().sum(-1)  # cdist has no gradient at 0
        if self.bandwidth is None:
            pairs = squared[torch.triu_indices(n, n, 1, device=u.device).unbind()]
            h2 = pairs.detach().median() / (2 * math.log(n + 1))
        else:
            h2 = torch.as_tensor(self.bandwidth**2, dtype=u.dtype, device=u.device)
        kernel = torch.exp(-squared / (2 * h2)) * (
            1 - torch.eye(n, dtype=u.dtype, device=u.device)
        )
        return (diff @ diff.T * kernel).sum() / (n * (n - 1))


def _sample_sites(trace: poutine.Trace):
    return ((n, s) for n, s in trace.nodes.items() if s["type"] == "sample")


def _is_noise_site(site: dict) -> bool:
    return isinstance(site["fn"], SemiImplicitLatent | ImplicitLatent)


def _max_plate_nesting(model: Callable, guide: Callable, args: tuple, kwargs: dict) -> int:
    r"""The deepest vectorised plate of the model and the guide, from one trace of each."""
    with poutine.block(), torch.no_grad():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
    frames = [
        f
        for trace in (guide_trace, model_trace)
        for _, s in _sample_sites(trace)
        for f in s["cond_indep_stack"]
        if f.vectorized
    ]
    return max((-f.dim for f in frames), default=0)
