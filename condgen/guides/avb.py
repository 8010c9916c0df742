r"""Adversarial variational Bayes: the ELBO of an implicit guide, through a discriminator."""

from __future__ import annotations

__all__ = ["AdversarialELBO"]

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from zuko.nn import MLP

from .._optim import adamw
from .latents import ImplicitLatent, _normal_log_prob, _with_context
from .sivi import _ParticleObjective


class AdversarialELBO(_ParticleObjective):
    r"""Adversarial variational Bayes (AVB) with adaptive contrast (Mescheder et al., 2017),
    for guides whose latent is an :class:`~condgen.guides.ImplicitLatent` (e.g.
    :class:`~condgen.guides.ImplicitGuide`), vectorised over particles.

    In the guide's unconstrained space, the ELBO's intractable term :math:`\log q(u)` is split
    against a Gaussian :math:`r = \mathcal{N}(m, \mathrm{diag}\, s^2)` whose moments match the
    guide's draws (the adaptive contrast),

    .. math:: \mathcal{L} = \mathbb{E}_q\big[\log p(x(u), y) + \log |\det J(u)| - \log r(u)
        - T(v)\big], \qquad v = (u - m) / s,

    where the discriminator :math:`T` is trained, one ``discriminator_steps`` round of Adam per
    step, by logistic regression of the guide's standardised draws against
    :math:`\mathcal{N}(0, I)` draws, whose optimum is :math:`T^* = \log q(u) - \log r(u)`. The
    guide's gradient goes through :math:`u` only (:math:`T`'s parameters and the moments are
    held fixed), which is the ELBO's reparametrised gradient when :math:`T = T^*`. Standardising
    against :math:`r` leaves the discriminator a ratio close to one to learn, instead of
    :math:`q / p` (a posterior against the prior), which is far.

    For an amortized guide (:class:`~condgen.guides.AmortizedImplicitGuide`) the contrast is
    per datum, its moments taken over the particles, and the discriminator sees each datum's
    context beside its draws: :math:`T(v_i, c_i)`.

    :meth:`log_ratio` gives the resulting estimate of :math:`\log q(u) - \log p(u)` (guide
    against prior, in unconstrained space). The method is sensitive to learning rates: the
    guide's must stay small against the discriminator's, or :math:`T` lags behind :math:`q` and
    the gradient is biased; prefer :class:`~condgen.guides.SemiImplicitGuide`, whose density
    estimate needs no game, unless the guide must be a free-form generator.

    Arguments:
        discriminator: A module from standardised draws ``[..., D]`` (for an amortized guide,
            followed by the datum's context: ``[..., D + C]``) to scores ``[..., 1]``; by
            default an MLP with ``hidden`` layers (built at the first call).
        hidden: The hidden layers of the default discriminator.
        lr: The discriminator's Adam learning rate.
        discriminator_steps: Discriminator updates per call of :meth:`loss_and_grads`.
        num_particles: The number of guide draws per step (vectorised), also the
            discriminator's batch.
        max_plate_nesting: The model's plate nesting (default: found by tracing once).

    Example:
        >>> import pyro, torch
        >>> from condgen.evaluate import TwoModes
        >>> from condgen.guides import ImplicitGuide
        >>> from condgen.guides.avb import AdversarialELBO
        >>> task = TwoModes()
        >>> guide, loss = ImplicitGuide(task.model, noise_dim=4), AdversarialELBO(lr=1e-3)
        >>> svi = pyro.infer.SVI(task.model, guide, pyro.optim.Adam({"lr": 1e-3}), loss)
        >>> for _ in range(20):  # about 2000 steps to converge
        ...     value = svi.step()
        >>> u = torch.randn(10, 2)  # points of the guide's unconstrained latent
        >>> loss.log_ratio(task.model, guide, u).shape  # log q(u) - log p(u)
        torch.Size([10])

    References:
        | Adversarial Variational Bayes: Unifying Variational Autoencoders and Generative
        | Adversarial Networks (Mescheder et al., 2017)
        | https://arxiv.org/abs/1701.04722
    """

    def __init__(
        self,
        discriminator: nn.Module | None = None,
        *,
        hidden: Sequence[int] = (64, 64),
        lr: float = 1e-3,
        discriminator_steps: int = 1,
        num_particles: int = 64,
        max_plate_nesting: float = math.inf,
    ):
        if discriminator is not None and not isinstance(discriminator, nn.Module):
            raise ValueError(f"discriminator must be an nn.Module or None, got {discriminator!r}")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        if not (isinstance(discriminator_steps, int) and discriminator_steps >= 1):
            raise ValueError(
                f"discriminator_steps must be a positive integer, got {discriminator_steps!r}"
            )
        super().__init__(num_particles, max_plate_nesting)
        if num_particles < 2:
            raise ValueError(f"num_particles must be at least 2 (moments), got {num_particles}")
        self.discriminator, self.hidden = discriminator, tuple(hidden)
        self.lr, self.discriminator_steps = lr, discriminator_steps
        self.optimizer: torch.optim.Optimizer | None = None
        self.moments: tuple[Tensor, Tensor] | None = None

    def _setup(self, features: int, like: Tensor) -> None:
        if self.discriminator is None:
            self.discriminator = MLP(features, 1, self.hidden, activation=nn.SiLU)
        self.discriminator.to(device=like.device, dtype=like.dtype)
        self.optimizer = adamw(self.discriminator.parameters(), lr=self.lr)

    def _score(self, v: Tensor, context: Tensor | None, detach: bool = False) -> Tensor:
        r""":math:`T` at standardised draws ``[..., D]`` (beside their context): ``[...]``."""
        inputs = _with_context(v, context)
        if detach:  # T as a fixed function: gradients reach v, not T's parameters
            params = {k: p.detach() for k, p in self.discriminator.named_parameters()}
            out = functional_call(self.discriminator, params, (inputs,))
        else:
            out = self.discriminator(inputs)
        return out.reshape(v.shape[:-1])

    def _train_discriminator(self, v: Tensor, context: Tensor | None) -> None:
        for _ in range(self.discriminator_steps):
            contrast = torch.randn_like(v)
            loss = nn.functional.softplus(-self._score(v, context)).mean()
            loss = loss + nn.functional.softplus(self._score(contrast, context)).mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()

    def _estimate(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> Tensor:
        n = self.num_particles
        model_trace, guide_trace = self._traces(model, guide, args, kwargs)
        site = self._noise_site(guide_trace, ImplicitLatent)
        features = site["fn"].features
        u = site["value"].reshape(n, -1, features)  # [particles, data (1 if global), D]
        context = site["fn"].context
        if context is not None:  # an amortized guide: per datum, beside its context
            context = context.detach().reshape(u.shape[1], -1)
        if self.optimizer is None:
            size = features + (0 if context is None else context.shape[-1])
            self._setup(size, u)
        loc, scale = u.detach().mean(0), u.detach().std(0).clamp_min(1e-6)
        self.moments = (loc, scale)
        v = (u - loc) / scale
        if torch.is_grad_enabled():
            with torch.enable_grad():
                self._train_discriminator(v.detach(), context)
        log_q = _normal_log_prob(u, loc, scale) + self._score(v, context, detach=True)
        log_p = self._log_density(model_trace, guide_trace, n)
        return -(log_p - site["scale"] * log_q.sum(-1)).mean()

    def log_ratio(
        self, model: Callable, guide: Callable, latent: Tensor, *args: Any, **kwargs: Any
    ) -> Tensor:
        r"""The discriminator's estimate of :math:`\log q(u) - \log p(u)`, the guide's
        log-density against the prior's, both over the guide's unconstrained latent :math:`u`
        (the prior's including the ``biject_to`` Jacobian):
        :math:`T((u - m) / s) + \log r(u) - \log p(u)`, with the moments of the last step.

        Arguments:
            model: The model (as trained).
            guide: The guide (as trained).
            latent: Values of the guide's unconstrained latent, ``[N, D]``.
            args: The model's arguments.
            kwargs: The model's keyword arguments.

        Returns:
            The estimates, ``[N]``.
        """
        if self.moments is None:
            raise ValueError("log_ratio needs a trained discriminator: call loss_and_grads first")
        if self.moments[0].shape[0] != 1:
            raise ValueError("log_ratio is for guides of global latents, not amortized ones")
        n = len(latent)
        with torch.no_grad():
            _, guide_trace = self._traces(model, guide, args, kwargs, num_particles=1)
            name = self._noise_site(guide_trace, ImplicitLatent)["name"]
            shape = (n, *(1,) * int(self.max_plate_nesting), latent.shape[-1])
            model_trace, guide_trace = self._traces(
                model, guide, args, kwargs, n, {name: latent.reshape(shape)}
            )
            log_prior = self._log_density(model_trace, guide_trace, n, observed=False)
            loc, scale = (m[0] for m in self.moments)
            log_r = _normal_log_prob(latent, loc, scale)
            return self._score((latent - loc) / scale, None) + log_r - log_prior
