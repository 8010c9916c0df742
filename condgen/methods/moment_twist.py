r"""SMC with a twist built from the local moments of :math:`x` given :math:`x_t`: the denoiser's
mean and, along the observed directions, its covariance :math:`\mathrm{Cov}[x \mid x_t] =
(\sigma_t^2 / \alpha_t)\, \partial D / \partial x_t` from vector-Jacobian products (Tweedie's
second-order identity), for a linear-Gaussian observation."""

from __future__ import annotations

__all__ = ["MomentTwistKernel", "MomentTwistSMC"]

import torch
from torch import Tensor

from .._gaussian import cholesky_log_prob, stable_cholesky
from .particle_filter import SMCKernel
from .path import PathSetup
from .smc import SMC


def _clamp_psd(matrix: Tensor) -> Tensor:
    r"""The symmetric part of a batch of small matrices ``[..., m, m]`` with its negative
    eigenvalues set to zero."""
    lam, V = torch.linalg.eigh((matrix + matrix.mT) / 2)
    return (V * lam.clamp(min=0).unsqueeze(-2)) @ V.mT


def _regularise(matrix: Tensor) -> Tensor:
    r"""A batch of small positive semi-definite matrices plus a relative jitter."""
    jitter = 1e-6 * matrix.diagonal(dim1=-2, dim2=-1).mean(-1).clamp(min=1e-30)
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    return matrix + jitter[..., None, None] * eye


class MomentTwistKernel(SMCKernel):
    r"""SMC moves for a linear-Gaussian observation :math:`y = A x + b + \sigma_y n` with the
    twist of the local Gaussian moments of :math:`x` given :math:`x_t`:

    .. math:: \psi_t(x_t) = \mathcal{N}\big(y;\ A D(x_t) + b,\ S_t(x_t)\big), \quad
        S_t = \mathrm{diag}(\sigma_y^2) + A C_t A^\top, \quad
        C_t A^\top = \frac{\sigma_t^2}{\alpha_t} J^\top A^\top,

    with :math:`J = \partial D / \partial x_t` (symmetric for an exact denoiser), measured by
    :math:`d_y` vector-Jacobian products along the rows of :math:`A`. It is the exact
    :math:`p(y \mid x_t)` for a Gaussian prior, and near a mode of a mixture close to that
    mode's predictive, where the twist of
    :class:`~condgen.methods.smc.GaussianTwistKernel` uses the prior's global moments.
    Where :math:`\alpha_t` is below ``min_alpha`` (:math:`t = 1` of a flow-matching path), the
    global moments' :math:`R_t A^\top` replaces :math:`C_t A^\top` and no VJP is taken.

    Proposal: the ancestral kernel :math:`\mathcal{N}(m, c^2 I)`, :math:`m = a D(x_t) + b
    x_t`, times the next twist linearised around :math:`m` with the slope
    :math:`\partial (A D_s) / \partial x_s = (\alpha_s / \sigma_s^2) A C_s \approx H = (\alpha_s
    / \sigma_s^2) (C_t A^\top)^\top` (the current covariance, known before the move), and the
    covariance :math:`S' = \mathrm{diag}(\sigma_y^2) + [A C_t A^\top - c^2 H H^\top]_+` chosen
    so that the linearised predictive :math:`c^2 H H^\top + S'` is :math:`S_t` (then the
    weights are constant for a Gaussian prior, up to the slope's approximation). Drawn by
    Matheron's rule; the weight is exact,

    .. math:: w = \frac{p(x_s \mid x_t)\, \psi_s(x_s)}{q(x_s \mid x_t)\, \psi_t(x_t)}
        = \frac{\mathcal{N}(r;\ 0,\ c^2 H H^\top + S')\ \psi_s(x_s)}
        {\mathcal{N}(r - H (x_s - m);\ 0,\ S')\ \psi_t(x_t)}, \quad r = y - b - A D(x_t),

    with :math:`\psi_s` evaluated at the drawn point (as TDS does); the last weight is
    :math:`p(y \mid D(x_{t_K})) / \psi_{t_K}(x_{t_K})`. So the weighted particles target the
    ancestral path conditioned on :math:`y`, and the evidence estimate is unbiased for it.

    Cost per particle and step: one denoiser evaluation and :math:`d_y` VJPs through it (at the
    new point; the next step reuses them), plus one of each at :math:`t = 1`.

    Arguments:
        setup, grid, batch_size: See :class:`~condgen.methods.particle_filter.SMCKernel`.
        moments: The prior's mean, covariance eigenvalues and eigenvectors (the fallback where
            :math:`\alpha_t` is tiny).
        min_alpha: Below it, the global moments replace the Jacobian.
    """

    name = "moment"

    def __init__(
        self,
        setup: PathSetup,
        grid: Tensor,
        batch_size: int,
        moments: tuple[Tensor, Tensor, Tensor],
        min_alpha: float = 1e-3,
    ):
        super().__init__(setup, grid, batch_size)
        linear = setup.linear
        self.A = linear.A
        self.noise = torch.diag(linear.sigma.pow(2))
        self.target = setup.y - linear.b  # A x + sigma_y n
        self.min_alpha = min_alpha
        _, eigenvalues, U = (v.to(self.A) for v in moments)
        self._global = (eigenvalues, U)

    def _global_cross(self, i: int) -> Tensor:
        r""":math:`R_t A^\top` ``[d, m]`` of the prior's global moments at time :math:`t_i`."""
        eigenvalues, U = self._global
        alpha, sigma = self.alphas[i], self.sigmas[i]
        shrink = sigma**2 * eigenvalues / (alpha**2 * eigenvalues + sigma**2)
        return (U * shrink) @ (U.T @ self.A.T)

    def _evaluate(self, x: Tensor, i: int) -> dict[str, Tensor]:
        r"""The state at :math:`x_{t_i}`: the denoised estimate ``x0``, :math:`G = C_t A^\top`
        ``[N, d, m]``, the Cholesky factor of :math:`S_t` and the log twist, in batches."""
        t, alpha, sigma = self.grid[i], self.alphas[i], self.sigmas[i]
        A = self.A.to(x)
        m = A.shape[0]
        x0s, crosses = [], []
        for chunk in x.split(self.batch_size):
            if alpha < self.min_alpha:
                x0s.append(self.denoise(chunk, i))
                cross = self._global_cross(i).to(x)
                crosses.append(cross.expand(len(chunk), *cross.shape))
                continue
            with torch.enable_grad():
                z = chunk.detach().requires_grad_()
                x0 = self.setup.prior.denoise(z, t)
                columns = []
                for k in range(m):
                    v = A[k].expand(len(chunk), -1).reshape(x0.shape)
                    (g,) = torch.autograd.grad(x0, z, v, retain_graph=k < m - 1)
                    columns.append(g.reshape(len(chunk), -1))
            x0s.append(x0.detach())
            crosses.append((sigma**2 / alpha) * torch.stack(columns, -1))
        x0, G = torch.cat(x0s), torch.cat(crosses)
        spread = _clamp_psd(A @ G)  # A C_t A^T
        chol = stable_cholesky(self.noise + spread)
        residual = self.target - x0.flatten(1) @ A.T
        log_twist = cholesky_log_prob(residual, chol)
        return {
            "x": x,
            "x0": x0,
            "G": G,
            "spread": spread,
            "residual": residual,
            "log_twist": log_twist,
        }

    def start(self, x: Tensor) -> dict[str, Tensor]:
        return self._evaluate(x, 0)

    def move(self, state, i, reference):
        x0, G, r, B = state["x0"], state["G"], state["residual"], state["spread"]
        mean = self.prior_mean(i, state["x"], x0)
        a, c = self.coef_x0[i], self.std[i]
        # the slope a A C (a^2 C + c^2 I)^{-1} of A E[x | x_s, x_t] under x | x_t ~ N(D, C),
        # with C completed from G = C A^T (Nystrom: C = G B^+ G^T, B = A G)
        inner = c**2 * B + a**2 * G.mT @ G
        H = a * B @ torch.linalg.solve(_regularise(inner), G.mT)  # [N, m, d]
        HH = c**2 * H @ H.mT
        chol_obs = stable_cholesky(self.noise + _clamp_psd(B - a * H @ G))  # S'
        chol_pred = stable_cholesky(HH + chol_obs @ chol_obs.mT)  # c^2 H H^T + S'
        # Matheron's rule: a draw of N(m, c^2 I) conditioned on r = H (x - m) + nu, nu ~ N(0, S')
        flat = mean.flatten(1)
        draw = c * torch.randn_like(flat)  # x - m
        nu = (chol_obs @ torch.randn_like(r).unsqueeze(-1)).squeeze(-1)
        simulated = (H @ draw.unsqueeze(-1)).squeeze(-1) + nu
        innovation = torch.cholesky_solve((r - simulated).unsqueeze(-1), chol_pred)
        x = flat + draw + c**2 * (H.mT @ innovation).squeeze(-1)
        x = x.reshape(mean.shape)
        if reference is not None:
            x[0] = reference
        step = (x - mean).flatten(1)
        log_predictive = cholesky_log_prob(r, chol_pred)  # log of the normaliser of q
        log_linear = cholesky_log_prob(r - (H @ step.unsqueeze(-1)).squeeze(-1), chol_obs)
        new = self._evaluate(x, i + 1)
        increment = log_predictive - log_linear + new["log_twist"] - state["log_twist"]
        return new, increment


class MomentTwistSMC(SMC):
    r""":class:`~condgen.methods.SMC` whose particles move by :class:`MomentTwistKernel` for a
    linear-Gaussian observation (not registered; pass an instance as ``method``). Its stat
    ``vjp`` counts :math:`d_y` VJPs per particle at each of the ``steps + 1`` times.

    Arguments:
        steps, ess_threshold, moment_samples, batch_size, num_runs, rhat, max_particles: See
            :class:`~condgen.methods.SMC`.
        min_alpha: See :class:`MomentTwistKernel`.
    """

    def __init__(
        self,
        steps: int = 100,
        ess_threshold: float = 0.5,
        moment_samples: int = 1024,
        batch_size: int = 1024,
        num_runs: int = 4,
        rhat: float | None = None,
        max_particles: int | None = None,
        min_alpha: float = 1e-3,
    ):
        super().__init__(
            steps, ess_threshold, moment_samples, batch_size, num_runs, rhat, max_particles
        )
        if not min_alpha >= 0:
            raise ValueError(f"min_alpha must be non-negative, got {min_alpha}")
        self.min_alpha = min_alpha

    def kernel(self, setup: PathSetup) -> SMCKernel:
        if setup.linear is None:
            return super().kernel(setup)
        grid, moments = self.grid(setup), self.moments(setup)
        return MomentTwistKernel(setup, grid, self.batch_size, moments, self.min_alpha)
