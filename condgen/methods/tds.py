r"""The twisted diffusion sampler: SMC with the twist :math:`p(y \mid D(x_t, t))^{\lambda_t}`."""

from __future__ import annotations

__all__ = ["TDS", "TDSKernel"]

import math

import torch
from torch import Tensor

from .._gaussian import normal_log_prob
from .base import register
from .particle_filter import SMCKernel, SMCMethod
from .path import PathSetup


def _clip(shift: Tensor, std: Tensor) -> Tensor:
    r"""Caps each particle's proposal shift at :math:`3 c \sqrt{d}` (three proposal sds per
    coordinate). A sharp likelihood can make :math:`c^2 \nabla \log \tilde p` huge far from the
    data; the weights use the capped proposal, so the sampler stays consistent."""
    norm = shift.flatten(1).norm(dim=1).clamp(min=1e-30)
    cap = 3 * std * math.sqrt(shift[0].numel())
    return shift * (cap / norm).clamp(max=1.0).reshape(-1, *[1] * (shift.dim() - 1))


class TDSKernel(SMCKernel):
    r"""The moves of the twisted diffusion sampler: the twist :math:`\tilde p_t(y \mid x_t) =
    p(y \mid D(x_t, t))^{\lambda_t}` and the proposal :math:`\mathcal{N}(m(x_t) + c^2
    \nabla_{x_t} \log \tilde p_t,\ c^2 I)`, weighted by :math:`p(x_s \mid x_t)\, \tilde p_s(y
    \mid x_s) / (q(x_s \mid x_t)\, \tilde p_t(y \mid x_t))`. Any likelihood works: only
    :math:`\log p(y \mid x)` and its gradient are needed.

    Arguments:
        setup, grid, batch_size: See :class:`~condgen.methods.particle_filter.SMCKernel`.
        twist_scale: A factor on :math:`\lambda_t`.
        twist_schedule: ``"snr"`` (:math:`\lambda_t = \alpha_t^2 / (\alpha_t^2 + \sigma_t^2)`)
            or ``"constant"`` (:math:`\lambda_t = 1`).
    """

    name = "tds"

    def __init__(
        self,
        setup: PathSetup,
        grid: Tensor,
        batch_size: int,
        twist_scale: float = 1.0,
        twist_schedule: str = "snr",
    ):
        super().__init__(setup, grid, batch_size)
        if twist_schedule == "constant":
            self.tempering = torch.full_like(grid, twist_scale)
        else:
            self.tempering = twist_scale * self.alphas**2 / (self.alphas**2 + self.sigmas**2)

    def _twist(self, x_t: Tensor, i: int) -> dict[str, Tensor]:
        r"""Denoised estimate, log twist and its gradient at :math:`x_{t_i}`, in batches."""
        outputs = []
        for chunk in x_t.split(self.batch_size):
            with torch.enable_grad():
                chunk = chunk.detach().requires_grad_()
                x0 = self.setup.prior.denoise(chunk, self.grid[i])
                log_twist = self.tempering[i] * self.setup.log_likelihood(x0)
                (grad,) = torch.autograd.grad(log_twist.sum(), chunk)
            outputs.append((x0.detach(), log_twist.detach(), grad))
        x0, log_twist, grad = (torch.cat(parts) for parts in zip(*outputs, strict=True))
        return {"x": x_t, "x0": x0, "log_twist": log_twist, "grad": grad}

    def start(self, x: Tensor) -> dict[str, Tensor]:
        return self._twist(x, 0)

    def move(self, state, i, reference):
        mean, std = self.prior_mean(i, state["x"], state["x0"]), self.std[i]
        shifted = mean + _clip(std**2 * state["grad"], std)
        x = shifted + std * torch.randn_like(mean)
        if reference is not None:
            x[0] = reference
        new = self._twist(x, i + 1)
        increment = (
            normal_log_prob(x, mean, std)
            - normal_log_prob(x, shifted, std)
            + new["log_twist"]
            - state["log_twist"]
        )
        return new, increment


@register
class TDS(SMCMethod):
    r"""The twisted diffusion sampler (Wu et al., 2023): sequential Monte Carlo whose target at
    time :math:`t` is the prior path twisted by :math:`\tilde p_t(y \mid x_t) = p(y \mid
    \hat x_0(x_t))^{\lambda_t}`, the likelihood at the denoised estimate.

    The paper twists with :math:`\lambda_t = 1` (``twist_schedule="constant"``). By default the
    twist is tempered by the signal fraction, :math:`\lambda_t = \alpha_t^2 / (\alpha_t^2 +
    \sigma_t^2)` (``"snr"``): early on, when :math:`\hat x_0(x_t)` is an average of modes, the
    full twist weights particles by the likelihood at a point no draw is near, and resampling
    then decides the mass of each mode by chance; tempering keeps those weights flatter until
    the modes separate. Both choices give a consistent sampler, since the last weights replace
    the twist by the exact likelihood.

    From :math:`t` to :math:`s`, each particle moves by the proposal

    .. math:: q(x_s \mid x_t) = \mathcal{N}\big(\mu(x_t) + c^2 \nabla_{x_t} \log
        \tilde p_t(y \mid x_t),\ c^2 I\big),

    where :math:`\mathcal{N}(\mu(x_t), c^2 I)` is the ancestral kernel :math:`p(x_s \mid x_t)`,
    and is weighted by

    .. math:: w_s = \frac{p(x_s \mid x_t)\, \tilde p_s(y \mid x_s)}{q(x_s \mid x_t)\,
        \tilde p_t(y \mid x_t)}.

    The shift of each proposal is capped at three proposal standard deviations per coordinate;
    the weights use the capped proposal, so this keeps the sampler consistent. Particles are
    resampled (systematic) when the effective sample size falls below ``ess_threshold`` times
    their number; at the end they are denoised, :math:`x = \hat x_0(x_{t_\text{min}})`, and the
    last weights :math:`p(y \mid x) / \tilde p_{t_\text{min}}(y \mid x_{t_\text{min}})` are
    applied.

    Known bias: the twist ignores how uncertain :math:`x_0` is given :math:`x_t`. When the
    observation is low-dimensional (:math:`d_y < d`) and the prior multimodal, early
    resampling can then put the mass on the wrong modes at modest particle counts (see the
    Gaussian-mixture benchmark at :math:`d = 8, d_y = 1` in docs/benchmarks.md);
    :class:`~condgen.methods.SMC` (``"smc"``) does not have this problem for linear-Gaussian
    observations. TDS needs only :math:`\log p(y \mid x)` and its gradient: any likelihood
    works, at one denoiser evaluation and one vector-Jacobian product through it per particle
    and step (the stats ``nfe`` and ``vjp``).

    Arguments:
        steps: The number of steps.
        ess_threshold: Resample when ESS / particles falls below this (1 resamples always).
        twist_scale: A factor on :math:`\lambda_t`.
        twist_schedule: ``"snr"`` (tempered, default) or ``"constant"`` (the paper's).
        batch_size: Particles whose network evaluations run at once.
        num_runs, rhat, max_particles: Independent runs, the quality target and its cap (see
            :class:`~condgen.methods.particle_filter.SMCMethod`).

    Stats:
        ``ess``, ``ancestors``, ``ess_trace``, ``resampled``, ``nfe`` (see
        :class:`~condgen.methods.particle_filter.SMCMethod`).

    References:
        | Practical and Asymptotically Exact Conditional Sampling in Diffusion Models
        | (Wu et al., 2023) https://arxiv.org/abs/2306.17775
    """

    name = "tds"

    def __init__(
        self,
        steps: int = 100,
        ess_threshold: float = 0.5,
        twist_scale: float = 1.0,
        twist_schedule: str = "snr",
        batch_size: int = 1024,
        num_runs: int = 4,
        rhat: float | None = None,
        max_particles: int | None = None,
    ):
        super().__init__(steps, ess_threshold, batch_size, num_runs, rhat, max_particles)
        if twist_schedule not in ("snr", "constant"):
            raise ValueError(f"twist_schedule must be 'snr' or 'constant', got {twist_schedule!r}")
        self.twist_scale, self.twist_schedule = twist_scale, twist_schedule

    def kernel(self, setup: PathSetup) -> TDSKernel:
        grid = self.grid(setup)
        return TDSKernel(setup, grid, self.batch_size, self.twist_scale, self.twist_schedule)
