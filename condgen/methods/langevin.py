r"""Annealed Langevin dynamics along a path prior: a predictor-corrector posterior sampler."""

from __future__ import annotations

__all__ = ["CorrectorStep", "Langevin"]

import torch
from torch import Tensor

from ..priors.samplers import PathStep, Step
from .base import register
from .guidance import guided_estimate
from .path import GuidedSampler, PathSetup


@register
class Langevin(GuidedSampler):
    r"""Annealed Langevin dynamics with the likelihood gradient: the predictor-corrector
    sampler of Song et al. (2021) applied to the posterior path.

    The posterior score at time :math:`t` is approximated by

    .. math:: \nabla_{x_t} \log p_t(x_t \mid y) \approx \nabla_{x_t} \log p_t(x_t)
        + \lambda \nabla_{x_t} \log p(y \mid \hat x_0(x_t)).

    Each step is a predictor (a step of ``sampler``, ancestral by default, with the guided
    denoiser :math:`D' = D + (\sigma_t^2/\alpha_t) \lambda \nabla \log p(y \mid \hat x_0)` of
    :func:`~condgen.methods.guidance.guided_estimate`, with its limit where
    :math:`\alpha_t \to 0`) followed by ``corrector_steps`` Langevin moves :math:`x \leftarrow
    x + \epsilon\, s(x) + \sqrt{2\epsilon}\, z` at the new noise level, with :math:`\epsilon =
    2 (r\, \overline{\|z\|} / \overline{\|s(x)\|})^2` (norms averaged over the batch) set by
    the signal-to-noise ratio ``snr`` :math:`= r`.

    What it targets: at each time the corrector leaves invariant (up to its step size) the
    tilted density :math:`p_t(x_t)\, p(y \mid \hat x_0(x_t))^\lambda`, which is the posterior
    only as :math:`t \to 0`; the draws approach the posterior only as the corrector runs long
    and its step shrinks at low noise.

    Known bias: at finite steps the mode masses are set at high noise, where the likelihood at
    :math:`\hat x_0` is not :math:`p(y \mid x_t)`, and low-noise Langevin moves cannot carry
    mass between separated modes, so on a multimodal prior the mode masses are biased, as
    PiGDM's are; unadjusted Langevin moves add a step-size bias, and the draws carry no weights.
    Use ``"smc"`` or ``"tds"`` for a consistent sampler.

    Arguments:
        steps: Predictor steps.
        corrector_steps: Langevin moves after each predictor step.
        snr: The corrector's signal-to-noise ratio :math:`r`.
        scale: The likelihood weight :math:`\lambda`.
        batch_size: Particles processed at once.
        sampler, eta: The predictor (see :class:`~condgen.methods.path.GuidedSampler`).

    References:
        | Score-Based Generative Modeling through SDEs (Song et al., 2021)
        | https://arxiv.org/abs/2011.13456
    """

    name = "langevin"
    family = "bayesian"
    unstable_option = "snr"

    def __init__(
        self,
        steps: int = 100,
        corrector_steps: int = 1,
        snr: float = 0.1,
        scale: float = 1.0,
        batch_size: int = 1024,
        sampler: str = "ddpm",
        eta: float | None = None,
    ):
        super().__init__(steps=steps, eta=eta, batch_size=batch_size, sampler=sampler)
        if corrector_steps < 0 or snr <= 0:
            raise ValueError("corrector_steps must be >= 0 and snr > 0")
        self.corrector_steps, self.snr, self.scale = corrector_steps, snr, scale

    def guided(self, setup: PathSetup, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        r"""The guided denoiser :math:`D'` at :math:`(x, t)`, by
        :func:`~condgen.methods.guidance.guided_estimate` (with its limit where
        :math:`\alpha_t \to 0`), and the posterior score it gives by Tweedie's formula,
        :math:`(\alpha_t D' - x) / \sigma_t^2`: the prior's score plus the likelihood term."""

        def log_guide(x0: Tensor) -> Tensor:
            return self.scale * setup.log_likelihood(x0)

        guided = guided_estimate(setup.prior, x, t, log_guide)
        return guided, setup.prior.schedule.score(x, guided, t, 0)

    def guided_denoise(self, setup: PathSetup, x_t: Tensor, t: Tensor) -> Tensor:
        return self.guided(setup, x_t, t)[0]

    def step(self, setup: PathSetup) -> CorrectorStep:
        return CorrectorStep(super().step(setup), setup, self)


class CorrectorStep(Step):
    r"""A predictor step followed by Langevin moves at the new noise level
    :math:`x \leftarrow x + \epsilon\, s(x) + \sqrt{2\epsilon}\, z`, with :math:`\epsilon =
    2 (r\, \overline{\|z\|} / \overline{\|s(x)\|})^2`, norms averaged over the batch (as in
    the paper: a per-particle ratio explodes near a mode, where the score vanishes).

    Arguments:
        predictor: The guided sampler's step.
        setup: The problem's neural site, prior and likelihood.
        method: The :class:`Langevin` method (its score, ``snr`` and ``corrector_steps``).
    """

    def __init__(self, predictor: PathStep, setup: PathSetup, method: Langevin):
        self.predictor, self.setup, self.method = predictor, setup, method

    def step(self, state: dict, i: int, t: Tensor, s: Tensor) -> tuple[dict, dict]:
        x = self.predictor.move(state["x"], t, s)
        event = tuple(range(1, x.dim()))
        for _ in range(self.method.corrector_steps):
            _, score = self.method.guided(self.setup, x, s)
            z = torch.randn_like(x)
            ratio = z.norm(dim=event).mean() / score.norm(dim=event).mean()
            eps = 2 * (self.method.snr * ratio) ** 2
            x = x + eps * score + (2 * eps).sqrt() * z
        return {"x": x}, {}

    def finish(self, state: dict, t: Tensor) -> Tensor:
        return self.predictor.finish(state, t)
