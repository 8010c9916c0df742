r"""Guidance-based conditioning of path priors: DPS, PiGDM, classifier and classifier-free
guidance."""

from __future__ import annotations

__all__ = ["CFG", "DPS", "ClassifierGuidance", "DPSStep", "PiGDM", "guided_estimate"]

from collections.abc import Callable

import torch
from torch import Tensor

from ..likelihoods import LinearGaussian, detect_linear_gaussian, observation_of
from ..priors.path import DiffusionPrior, PathPrior
from ..priors.samplers import PathStep, Step, check_sampler, make_sampler
from .base import register
from .path import GuidedSampler, PathMethod, PathSetup


def guided_estimate(
    prior: PathPrior,
    x_t: Tensor,
    t: Tensor,
    log_guide: Callable[[Tensor], Tensor],
    of: str = "denoised",
) -> Tensor:
    r"""The denoised estimate corrected by a guidance term through Tweedie's formula, with its
    limit where :math:`\alpha_t \to 0`.

    A guidance term :math:`\log g_t(x_t)` added to the prior's log-density at time :math:`t`
    adds its gradient to the score, which Tweedie's formula :math:`E[x \mid x_t] = (x_t +
    \sigma_t^2 \nabla \log p_t(x_t)) / \alpha_t` turns into a correction of the denoiser
    :math:`\hat x_0 = D(x_t, t)`:

    .. math:: D'(x_t, t) = \hat x_0 + \frac{\sigma_t^2}{\alpha_t}
        \nabla_{x_t} \log g_t(x_t).

    ``of="denoised"``: the guidance is a function of the denoised estimate, :math:`\log g_t =
    \ell(\hat x_0(x_t))` (PiGDM, Langevin). Its gradient is the vector-Jacobian product
    :math:`J^\top \nabla \ell(\hat x_0)` with :math:`J = \partial \hat x_0 / \partial x_t =
    (\alpha_t / \sigma_t^2) \mathrm{Cov}[x \mid x_t]`. Where :math:`\alpha_t \to 0`
    (:math:`t = 1` on the rectified or cosine path) the factor :math:`\sigma_t^2 / \alpha_t`
    diverges while :math:`J \to 0`; with the Gaussian approximation :math:`\mathrm{Cov}[x \mid
    x_t] \approx r_t^2 I`, :math:`r_t^2 = \sigma_t^2 / (\alpha_t^2 + \sigma_t^2)` (exact for
    a unit-variance Gaussian prior), the correction has the finite limit

    .. math:: D'(x_t, t) = \hat x_0 + r_t^2\, \nabla \ell(\hat x_0),

    with :math:`r_1^2 = 1` at :math:`\alpha_1 = 0`.

    ``of="noisy"``: the guidance is a function of :math:`x_t` itself, e.g. a noise-conditional
    classifier :math:`\log p(c \mid x_t, t)`. For an exact classifier the correction is
    :math:`E[x \mid x_t, c] - E[x \mid x_t]`, whose limit :math:`E[x \mid c] - E[x]` the
    gradient cannot give where :math:`\alpha_t = 0` (:math:`x_t` then carries no information
    on :math:`x`, and the gradient vanishes): there the correction is left out,
    :math:`D' = \hat x_0`, an error of order :math:`\alpha_s` in the next state :math:`x_s`.

    The limit forms are used where :math:`\alpha_t \le 10^{-3} \sigma_t`, the formula
    elsewhere.

    Arguments:
        prior: The path prior, with its denoiser and schedule.
        x_t: The noisy states, shaped ``[n, *event_shape]``.
        t: The time, a scalar tensor.
        log_guide: :math:`\ell` (of the denoised estimate) or :math:`\log g_t` (of
            :math:`x_t`), one value per state, differentiable.
        of: ``"denoised"`` or ``"noisy"``, what ``log_guide`` takes.

    Returns:
        :math:`D'(x_t, t)`, detached, shaped like ``x_t``.

    Example:
        A standard normal prior on the rectified path, guided by :math:`\ell(x) = x_1`: the
        correction is :math:`r_t^2 e_1`, with :math:`r_t^2 = 1/2` at :math:`t = 1/2` and the
        limit :math:`r_1^2 = 1` at :math:`t = 1`, where :math:`\alpha_1 = 0`.

        >>> from condgen.methods.guidance import guided_estimate
        >>> from condgen.priors import GaussianMixturePrior
        >>> prior = GaussianMixturePrior(
        ...     torch.ones(1), torch.zeros(1, 2), torch.eye(2)[None], schedule="rectified"
        ... )
        >>> def first(x0):
        ...     return x0[:, 0]
        >>> x_t = torch.zeros(1, 2)
        >>> guided_estimate(prior, x_t, torch.tensor(0.5), first)
        tensor([[0.5000, 0.0000]])
        >>> guided_estimate(prior, x_t, torch.tensor(1.0), first)
        tensor([[1., 0.]])
    """
    if of not in ("denoised", "noisy"):
        raise ValueError(f"of must be 'denoised' or 'noisy', got {of!r}")
    alpha, sigma = prior.schedule(t)
    limit = bool(alpha <= 1e-3 * sigma)
    through = of == "denoised" and not limit  # differentiate through the denoiser
    with torch.set_grad_enabled(through):
        x = x_t.detach().requires_grad_(through)
        x0 = prior.denoise(x, t)
    if of == "noisy" and limit:
        return x0.detach()
    with torch.enable_grad():
        point = x if through else (x0 if of == "denoised" else x_t).detach().requires_grad_()
        (grad,) = torch.autograd.grad(log_guide(x0 if through else point).sum(), point)
    factor = sigma**2 / (alpha**2 + sigma**2) if limit else sigma**2 / alpha
    return (x0 + factor * grad).detach()


class DPSStep(Step):
    r"""The move of DPS: a step of the prior's sampler, then the likelihood gradient at the
    denoised estimate, normalised per particle by the standardised residual.

    Arguments:
        base: The prior's sampler; its first denoiser evaluation is the one differentiated.
        setup: The problem's neural site, prior and likelihood.
        scale: The step size :math:`\zeta`.
    """

    def __init__(self, base: PathStep, setup: PathSetup, scale: float):
        self.base, self.setup, self.scale = base, setup, scale

    def step(self, state: dict, i: int, t: Tensor, s: Tensor) -> tuple[dict, dict]:
        x = state["x"]
        with torch.enable_grad():
            x_t = x.detach().requires_grad_()
            x0 = self.setup.prior.denoise(x_t, t)
            log_lik, residual = self.setup.likelihood_terms(x0)
            (grad,) = torch.autograd.grad(log_lik.sum(), x_t) if self.scale else (0.0,)
        size = self.scale / residual.detach().clamp(min=1e-12)
        moved = self.base.move(x, t, s, x0=x0.detach())
        return {"x": moved + size.reshape(-1, *[1] * (x.dim() - 1)) * grad}, {
            "residual": float(residual.detach().mean())
        }

    def finish(self, state: dict, t: Tensor) -> Tensor:
        return self.base.finish(state, t)


@register
class DPS(PathMethod):
    r"""Diffusion posterior sampling (Chung et al., 2023).

    Each step is an ancestral (DDPM) step of the prior followed by a gradient step on the
    residual of the observation at the denoised estimate :math:`\hat x_0 = D(x_t, t)`:

    .. math:: x_s \leftarrow x_s + \frac{\zeta}{\|r(\hat x_0)\|}\,
        \nabla_{x_t} \log p(y \mid \hat x_0(x_t)),

    where :math:`r` is the standardised residual :math:`(y - E[y \mid \hat x_0]) /
    \mathrm{sd}[y \mid \hat x_0]`. For :math:`y \sim \mathcal{N}(A x, \sigma^2 I)` this is the
    paper's rule :math:`x_s \leftarrow x_s - \zeta' \nabla_{x_t} \|y - A \hat x_0\|` with
    :math:`\zeta' = \zeta / \sigma`; the likelihood itself comes from the Pyro model, so any
    observation model with a mean and a variance works. The step size is normalised per
    particle (not over the batch, which would shrink guidance like :math:`1/\sqrt{n}`).

    Known bias: DPS is not a posterior sampler. It replaces :math:`p(y \mid x_t)` by
    :math:`p(y \mid E[x \mid x_t])` and then rescales the step, so its draws are neither the
    posterior nor calibrated; large ``scale`` collapses them toward modes of the likelihood,
    small ``scale`` leaves them near the prior. ``scale=0`` samples the prior.

    The prior's move is any sampler of :data:`~condgen.priors.samplers.SAMPLERS`: the paper's
    ancestral step (``"ddpm"``, default) or, e.g., ``"heun"``, which reuses the differentiated
    denoiser evaluation for its first stage. The mean standardised residual of each step is
    reported as ``stats["residual_trace"]``.

    Arguments:
        scale: The step size :math:`\zeta`, in units of the observation noise. The paper tunes
            :math:`\zeta'` per task; the default 0.1 moves each particle by a tenth of a noise
            sd per step (times the denoiser's Jacobian). Larger values collapse the draws
            onto the likelihood's mode faster; tune it, and measure against a reference.
        steps: The number of steps.
        batch_size: Particles processed at once.
        sampler: The prior's sampler.
        eta: The stochasticity of ``"ddpm"``/``"ddim"``.

    References:
        | Diffusion Posterior Sampling for General Noisy Inverse Problems (Chung et al., 2023)
        | https://arxiv.org/abs/2209.14687
    """

    name = "dps"
    family = "guidance"
    unstable_option = "scale"

    def __init__(
        self,
        scale: float = 0.1,
        steps: int = 200,
        batch_size: int = 1024,
        sampler: str = "ddpm",
        eta: float | None = None,
    ):
        super().__init__(steps=steps, batch_size=batch_size)
        check_sampler(sampler, eta)
        self.scale, self.sampler, self.eta = scale, sampler, eta

    def step(self, setup: PathSetup) -> DPSStep:
        base = make_sampler(self.sampler, setup.prior.denoise, setup.prior.schedule, self.eta)
        return DPSStep(base, setup, self.scale)


@register
class PiGDM(GuidedSampler):
    r"""Pseudo-inverse guided diffusion (Song et al., 2023) for linear-Gaussian observations
    :math:`y = A x + b + \sigma_y n`.

    :math:`p(y \mid x_t)` is approximated by :math:`\mathcal{N}(A \hat x_0 + b, \Sigma_t)`,
    :math:`\Sigma_t = \mathrm{diag}(\sigma_y^2) + r_t^2 A A^\top`, with
    :math:`r_t^2 = \sigma_t^2 / (\alpha_t^2 + \sigma_t^2)` (the posterior variance of a
    unit-variance prior), which gives the guidance

    .. math:: g = \Big(\frac{\partial \hat x_0}{\partial x_t}\Big)^\top A^\top
        \Sigma_t^{-1} (y - A \hat x_0 - b),

    added to the denoiser through Tweedie's formula, :math:`D' = \hat x_0 + (\sigma_t^2 /
    \alpha_t) g`, by :func:`guided_estimate`, whose limit where :math:`\alpha_t \to 0`
    (:math:`t = 1` on the rectified or cosine path) is the Kalman update
    :math:`D' = \hat x_0 + r_t^2 A^\top \Sigma_t^{-1} (y - A \hat x_0 - b)`.
    :math:`\Sigma_t` is factorised by Cholesky with the observation noise included, so
    ill-conditioned :math:`A` stays stable (no :math:`A^+` that ignores the noise).

    The observation model is detected from the Pyro model (one ``Normal`` site whose mean is
    linear in the neural site; observed sites that do not depend on it, such as a latent fixed
    with :func:`pyro.condition`, are constant factors) or declared with
    ``linear=condgen.LinearGaussian(A, sigma, b)``.

    Known bias: the Gaussian approximation of :math:`p(x_0 \mid x_t)` with an isotropic
    variance :math:`r_t^2` is exact only for a Gaussian prior with unit variance; PiGDM is not
    a posterior sampler for multimodal priors, whose mode masses it misweights.

    Arguments:
        linear: The declared observation model, or None to detect it.
        scale: A factor on the guidance (1 is the paper's).
        steps, eta, batch_size, sampler: See :class:`~condgen.methods.path.GuidedSampler`.

    References:
        | Pseudoinverse-Guided Diffusion Models for Inverse Problems (Song et al., 2023)
        | https://openreview.net/forum?id=9_gsMA8MRKQ
    """

    name = "pigdm"
    family = "guidance"
    unstable_option = "scale"

    def __init__(
        self,
        linear: LinearGaussian | None = None,
        scale: float = 1.0,
        steps: int = 100,
        eta: float | None = None,
        batch_size: int = 1024,
        sampler: str = "ddpm",
    ):
        super().__init__(steps=steps, eta=eta, batch_size=batch_size, sampler=sampler)
        self.linear, self.scale = linear, scale

    def setup(self, problem):
        setup = super().setup(problem)
        if self.linear is not None:
            linear = self.linear.to(torch.empty((), dtype=problem.dtype, device=problem.device))
            obs = observation_of(problem, setup.site, self.name)
            if problem.observations[obs].numel() != linear.A.shape[0]:
                raise ValueError(
                    f"linear.A has {linear.A.shape[0]} rows, but the observation '{obs}' has "
                    f"{problem.observations[obs].numel()} entries"
                )
            setup.linear, setup.y = linear, problem.observations[obs].reshape(-1).to(linear.A)
        elif setup.linear is None:  # not detected: say why
            linear, obs = detect_linear_gaussian(problem, setup.site, self.name)
            setup.linear, setup.y = linear, problem.observations[obs].reshape(-1).to(linear.A)
        return setup

    def guided_denoise(self, setup: PathSetup, x_t: Tensor, t: Tensor) -> Tensor:
        A, b, sigma_y = setup.linear.A, setup.linear.b, setup.linear.sigma
        alpha, sigma = setup.prior.schedule(t)
        r2 = sigma**2 / (alpha**2 + sigma**2)
        cov = torch.diag(sigma_y**2) + r2 * A @ A.T
        jitter = 1e-6 * cov.diagonal().mean()
        chol = torch.linalg.cholesky(
            cov + jitter * torch.eye(len(A), dtype=A.dtype, device=A.device)
        )

        def log_guide(x0: Tensor) -> Tensor:  # log N(y; A x0 + b, Sigma_t), up to a constant
            residual = setup.y - x0.reshape(len(x0), -1) @ A.T - b
            z = torch.linalg.solve_triangular(chol, residual.unsqueeze(-1), upper=False)
            return -0.5 * self.scale * z.squeeze(-1).pow(2).sum(-1)

        return guided_estimate(setup.prior, x_t, t, log_guide)


@register
class ClassifierGuidance(GuidedSampler):
    r"""Classifier guidance (Dhariwal and Nichol, 2021) by a noise-conditional classifier or
    any differentiable :math:`\log p(c \mid x_t, t)`:

    .. math:: D' = D + \frac{\sigma_t^2}{\alpha_t}\, w\, \nabla_{x_t} \log p(c \mid x_t, t).

    The condition is carried by ``classifier`` (bind the class yourself, e.g. with a
    ``lambda``); observed sites of the model are not used.

    Known bias: with :math:`w = 1` and a classifier that is exact at every noise level this
    samples :math:`p(x \mid c)`; otherwise (:math:`w \neq 1`, or a classifier trained on
    clean data) it samples a tilted, sharpened distribution, not a posterior.

    Arguments:
        classifier: A callable ``classifier(x_t, t) -> log p(c | x_t, t)`` shaped like the batch.
        scale: The guidance weight :math:`w`.
        steps, eta, batch_size, sampler: See :class:`~condgen.methods.path.GuidedSampler`.

    References:
        | Diffusion Models Beat GANs on Image Synthesis (Dhariwal and Nichol, 2021)
        | https://arxiv.org/abs/2105.05233
    """

    name = "classifier"
    family = "guidance"
    unstable_option = "scale"

    def __init__(
        self,
        classifier: Callable[[Tensor, Tensor], Tensor] | None = None,
        scale: float = 1.0,
        steps: int = 100,
        eta: float | None = None,
        batch_size: int = 1024,
        sampler: str = "ddpm",
    ):
        super().__init__(steps=steps, eta=eta, batch_size=batch_size, sampler=sampler)
        self.classifier, self.scale = classifier, scale

    def setup(self, problem):
        if self.classifier is None:
            raise ValueError(
                "method 'classifier' needs classifier=callable(x_t, t) returning "
                "log p(c | x_t, t); for an observation in the model use 'dps' or 'tds'"
            )
        return super().setup(problem)

    def guided_denoise(self, setup: PathSetup, x_t: Tensor, t: Tensor) -> Tensor:
        def log_guide(x: Tensor) -> Tensor:
            return self.scale * self.classifier(x, t.expand(len(x)))

        return guided_estimate(setup.prior, x_t, t, log_guide, of="noisy")


@register
class CFG(GuidedSampler):
    r"""Classifier-free guidance (Ho and Salimans, 2022) for a conditional path prior.

    The site's prior must be a conditional prior bound to a context, ``prior.given(c)``, whose
    network was trained with context dropout so that it also models :math:`p(x)`:

    .. math:: D' = D(x_t, t) + w\, \big(D(x_t, t, c) - D(x_t, t)\big).

    The condition is the prior's context; observed sites of the model are not used.

    Known bias: :math:`w = 1` samples the conditional prior :math:`p(x \mid c)` (as well as the
    network learned it); :math:`w > 1` samples a sharpened distribution
    :math:`\propto p(x)\,p(c \mid x)^w` only approximately, not a posterior.

    Arguments:
        scale: The guidance weight :math:`w`.
        steps, eta, batch_size, sampler: See :class:`~condgen.methods.path.GuidedSampler`.

    References:
        | Classifier-Free Diffusion Guidance (Ho and Salimans, 2022)
        | https://arxiv.org/abs/2207.12598
    """

    name = "cfg"
    family = "guidance"
    unstable_option = "scale"

    def __init__(
        self,
        scale: float = 1.0,
        steps: int = 100,
        eta: float | None = None,
        batch_size: int = 1024,
        sampler: str = "ddpm",
    ):
        super().__init__(steps=steps, eta=eta, batch_size=batch_size, sampler=sampler)
        self.scale = scale

    def setup(self, problem):
        setup = super().setup(problem)
        if not isinstance(setup.prior, DiffusionPrior) or setup.prior.context is None:
            raise ValueError(
                f"method 'cfg' needs a conditional prior bound to a context at site "
                f"'{setup.site}': sample it as pyro.sample('{setup.site}', prior.given(c))"
            )
        setup.unconditional = setup.prior.given(None)
        return setup

    def guided_denoise(self, setup: PathSetup, x_t: Tensor, t: Tensor) -> Tensor:
        with torch.no_grad():
            unconditional = setup.unconditional.denoise(x_t, t)
            conditional = setup.prior.denoise(x_t, t)
        return unconditional + self.scale * (conditional - unconditional)
