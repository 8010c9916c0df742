r"""SMC moves whose reverse transition carries the spread of :math:`x` given :math:`x_t`: the
ancestral kernel's covariance :math:`c^2 I` plus :math:`a^2 \mathrm{Cov}[x \mid x_t]`, measured
by vector-Jacobian products of the denoiser along a few directions (Tweedie's second-order
identity) and completed by the Gaussian-moment covariance elsewhere."""

from __future__ import annotations

__all__ = ["CovarianceKernel", "CovarianceSMC"]


import torch
from torch import Tensor

from .._gaussian import cholesky_log_prob, log_density, stable_cholesky
from .particle_filter import SMCKernel
from .path import PathSetup
from .smc import SMC, GaussianTwistKernel


class CovarianceKernel(GaussianTwistKernel):
    r"""The locally optimal moves of :class:`~condgen.methods.smc.GaussianTwistKernel`
    for a linear-Gaussian observation, along a reverse transition that includes the spread of
    :math:`x` given :math:`x_t`.

    The ancestral kernel :math:`\mathcal{N}(a D(x_t) + b x_t, c^2 I)` has the exact mean of
    :math:`p(x_s \mid x_t)` but not its covariance, :math:`c^2 I + a^2 \mathrm{Cov}[x \mid
    x_t]`; the missing term moves prior mass between modes to first order in the step. This
    kernel's *model* of the path is the Markov chain with transitions

    .. math:: \hat p(x_s \mid x_t) = \mathcal{N}\big(a D(x_t) + b x_t,\ \Sigma(x_t)\big), \quad
        \Sigma = c^2 I + a^2 \big(G B^{+} G^\top + P R_t P\big),

    where, for fixed orthonormal directions :math:`Q \in \mathbb{R}^{d \times r}` (the ``rank``
    leading principal directions of the prior, and with ``observed`` the rows of :math:`A`),
    :math:`G = \mathrm{Cov}[x \mid x_t]\, Q = (\sigma_t^2 / \alpha_t)\, J^\top Q` comes from
    :math:`r` vector-Jacobian products of the denoiser (:math:`J = \partial D / \partial x_t`,
    symmetric for an exact denoiser), :math:`B = Q^\top G` (symmetrised, its negative
    eigenvalues dropped), so that :math:`G B^{+} G^\top` is the Nyström completion that is exact
    on the span of :math:`Q` and its cross-covariances, and :math:`P R_t P` is the
    Gaussian-moment covariance :math:`R_t = \sigma_t^2 C (\alpha_t^2 C + \sigma_t^2 I)^{-1}` of
    the prior's covariance :math:`C`, projected on the complement :math:`P = I - Q Q^\top`. For
    a Gaussian prior (and :math:`Q` among :math:`C`'s eigenvectors) :math:`\Sigma` is exact;
    for a mixture of isotropic components whose means span :math:`Q`, also exact.

    With the Gaussian twist :math:`\mathcal{N}(\tilde y_s; H_s x_s, S_s)` of the parent class,
    the proposal is the product of :math:`\hat p` and the next twist, drawn exactly by
    Matheron's rule, and the weight, known before the move, is

    .. math:: w = \mathcal{N}(\tilde y_s;\ H_s m,\ H_s \Sigma H_s^\top + S_s)
        \,/\, \tilde p_t(y \mid x_t),

    with the gain :math:`\Sigma H_s^\top (H_s \Sigma H_s^\top + S_s)^{-1}`, per particle (the
    algebra is in the observation's dimension). The last weight replaces the twist by the
    likelihood, so the particles target :math:`\hat p(x_{0:K}) p(y \mid D(x_{t_K}))` exactly
    and the evidence estimate is unbiased for that model.

    Cost per particle and step: one denoiser evaluation and :math:`r` vector-Jacobian products
    (all from one forward pass), against one evaluation for the parent class. The complement
    :math:`P R_t^{1/2}` is a dense :math:`d \times d` matrix per step (fine for :math:`d` up to
    a few thousand).

    Arguments:
        setup, grid, batch_size, moments: As
            :class:`~condgen.methods.smc.GaussianTwistKernel`.
        rank: The prior's principal directions measured by the Jacobian.
        observed: Whether to measure along the rows of :math:`A` too (:math:`d_y` more VJPs).
    """

    name = "covariance"

    def __init__(
        self,
        setup: PathSetup,
        grid: Tensor,
        batch_size: int,
        moments: tuple[Tensor, Tensor, Tensor],
        rank: int = 2,
        observed: bool = False,
    ):
        super().__init__(setup, grid, batch_size, moments)
        A = setup.linear.A
        _, eigenvalues, U = (v.to(A) for v in moments)
        d = U.shape[0]
        rank = min(rank, d)
        directions = [U[:, d - rank :]]  # eigh sorts the eigenvalues in ascending order
        if observed:
            directions.append(A.T)
        Q, R = torch.linalg.qr(torch.cat(directions, 1))
        keep = R.diagonal().abs() > 1e-6 * R.diagonal().abs().max()
        self.Q = Q[:, keep]  # [d, r]
        self.eigenvalues, self.U = eigenvalues, U
        self.directions = self.Q.shape[1]
        self._step: tuple[int, Tensor, Tensor] | None = None

    def _complement(self, i: int) -> tuple[Tensor, Tensor]:
        r"""For step ``i``: :math:`P R_{t_i}^{1/2}` ``[d, d]`` and :math:`P R_{t_i} P
        H_{i+1}^\top` ``[d, m]``, computed once per step."""
        if self._step is None or self._step[0] != i:
            alpha, sigma = self.alphas[i], self.sigmas[i]
            lam = self.eigenvalues
            root = (sigma**2 * lam / (alpha**2 * lam + sigma**2)).sqrt()
            half = (self.U * root) @ self.U.T
            half = half - self.Q @ (self.Q.T @ half)  # P R^{1/2}
            cross = half @ (half.T @ self.H[i + 1].T)  # P R P H^T
            self._step = (i, half, cross)
        return self._step[1], self._step[2]

    def _jacobian_factor(self, x_t: Tensor, i: int) -> tuple[Tensor, Tensor]:
        r"""The denoised estimate and :math:`F = G B^{+1/2}` ``[N, d, r]``, with
        :math:`F F^\top` the Nyström covariance, in batches."""
        t, alpha, sigma = self.grid[i], self.alphas[i], self.sigmas[i]
        Q = self.Q.to(x_t)
        x0s, factors = [], []
        for chunk in x_t.split(self.batch_size):
            with torch.enable_grad():
                x = chunk.detach().requires_grad_()
                x0 = self.setup.prior.denoise(x, t)
                columns = []
                for j in range(Q.shape[1]):
                    v = Q[:, j].expand(len(chunk), -1).reshape(chunk.shape)
                    (g,) = torch.autograd.grad(x0, x, v, retain_graph=j < Q.shape[1] - 1)
                    columns.append(g.reshape(len(chunk), -1))
            G = (sigma**2 / alpha) * torch.stack(columns, -1)  # [n, d, r]
            B = Q.T @ G
            lam, V = torch.linalg.eigh((B + B.mT) / 2)
            floor = 1e-6 * lam.abs().amax(-1, keepdim=True).clamp(min=1e-30)
            inv_root = torch.where(lam > floor, lam.clamp(min=1e-30).rsqrt(), 0.0)
            factors.append(G @ (V * inv_root.unsqueeze(-2)))
            x0s.append(x0.detach())
        return torch.cat(x0s), torch.cat(factors)

    def reweight(self, state: dict[str, Tensor], i: int) -> Tensor:
        x0, F = self._jacobian_factor(state["x"], i)
        mean = self.prior_mean(i, state["x"], x0)
        a, c, H = self.coef_x0[i], self.std[i], self.H[i + 1]
        _, cross = self._complement(i)
        HF = H @ F  # [N, m, r]
        # Sigma H^T = c^2 H^T + a^2 (F (H F)^T + P R P H^T), shaped [N, d, m]
        gain_numerator = c**2 * H.T + a**2 * (F @ HF.mT + cross)
        twist = self.chol_twist[i + 1]
        predictive = H @ gain_numerator + twist @ twist.mT
        chol = stable_cholesky(predictive)
        state.update(mean=mean, F=F, chol_predictive=chol, gain=gain_numerator)
        residual = self.y[i + 1] - mean.flatten(1) @ H.T
        return cholesky_log_prob(residual, chol) - state["log_twist"]

    def move(self, state, i, reference):
        mean, F = state["mean"], state["F"]
        a, c, H = self.coef_x0[i], self.std[i], self.H[i + 1]
        half, _ = self._complement(i)
        flat = mean.flatten(1)
        n, d = flat.shape
        # a draw of the model's transition N(mean, c^2 I + a^2 (F F^T + P R P))
        low = (F @ torch.randn(n, F.shape[-1], 1, dtype=flat.dtype, device=flat.device)).squeeze(
            -1
        )
        rest = torch.randn(n, d, dtype=flat.dtype, device=flat.device) @ half.T
        draw = flat + c * torch.randn_like(flat) + a * (low + rest)
        # Matheron's rule: condition the draw on the next twist's observation
        noise = (
            torch.randn(n, len(H), dtype=flat.dtype, device=flat.device) @ self.chol_twist[i + 1].T
        )
        simulated = draw @ H.T + noise
        innovation = torch.cholesky_solve(
            (self.y[i + 1] - simulated).unsqueeze(-1), state["chol_predictive"]
        )
        x = (draw + (state["gain"] @ innovation).squeeze(-1)).reshape(mean.shape)
        if reference is not None:
            x[0] = reference
        state = {"x": x, "log_twist": self._log_twist(x, i + 1)}
        return state, torch.zeros_like(state["log_twist"])

    def transition_log_prob(self, state: dict[str, Tensor], i: int, x_next: Tensor) -> Tensor:
        r""":math:`\log \hat p(x_{t_{i+1}} \mid x^j_{t_i})` of the model's transition for one
        point and every particle (after :meth:`reweight`), by Woodbury's identity around
        :math:`\Sigma_0 = c^2 I + a^2 P R P`."""
        mean, F = state["mean"].flatten(1), state["F"]
        a, c = self.coef_x0[i], self.std[i]
        half, _ = self._complement(i)
        d = mean.shape[1]
        eye = torch.eye(d, dtype=mean.dtype, device=mean.device)
        L0 = torch.linalg.cholesky(c**2 * eye + a**2 * half @ half.T)
        residual = x_next.flatten().unsqueeze(0) - mean  # [N, d]
        z = torch.linalg.solve_triangular(L0, residual.T, upper=False).T  # L0^{-1} r
        W = a * torch.linalg.solve_triangular(L0, F.reshape(-1, d, F.shape[-1]), upper=False)
        r = F.shape[-1]
        inner = (
            torch.eye(r, dtype=mean.dtype, device=mean.device) + W.mT @ W
        )  # I + a^2 F^T S0^{-1} F
        chol = torch.linalg.cholesky(inner)
        u = torch.linalg.solve_triangular(chol, (W.mT @ z.unsqueeze(-1)), upper=False)
        quad = z.pow(2).sum(-1) - u.squeeze(-1).pow(2).sum(-1)
        log_det = L0.diagonal().log().sum() + chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return log_density(quad, 2 * log_det, d)


class CovarianceSMC(SMC):
    r""":class:`~condgen.methods.SMC` whose particles move by :class:`CovarianceKernel` for a
    linear-Gaussian observation (not registered; pass an instance as ``method``).

    Arguments:
        steps, ess_threshold, moment_samples, batch_size, num_runs, rhat, max_particles: See
            :class:`~condgen.methods.SMC`.
        rank, observed: See :class:`CovarianceKernel`.
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
        rank: int = 2,
        observed: bool = False,
    ):
        super().__init__(
            steps, ess_threshold, moment_samples, batch_size, num_runs, rhat, max_particles
        )
        if rank < 0:
            raise ValueError(f"rank must be non-negative, got {rank}")
        self.rank, self.observed = rank, observed

    def kernel(self, setup: PathSetup) -> SMCKernel:
        if setup.linear is None:
            return super().kernel(setup)
        grid, moments = self.grid(setup), self.moments(setup)
        return CovarianceKernel(setup, grid, self.batch_size, moments, self.rank, self.observed)
