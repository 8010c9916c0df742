r"""Flow-matching posterior estimation: a conditional flow-matching prior trained on the
model's own simulations, amortized over observations."""

from __future__ import annotations

__all__ = ["FMPE"]

from typing import Any, ClassVar

from torch import nn

from ..priors.path import DiffusionPrior, FlowMatchingPrior
from .path import PathEstimator


class FMPE(PathEstimator):
    r"""Flow-matching posterior estimation (FMPE): an amortized posterior of a Pyro model that
    is a conditional flow-matching prior.

    On the rectified path :math:`u_t = (1 - t) u + t \epsilon` of standardised unconstrained
    latents (see :class:`~condgen.amortized.PosteriorEstimator`), a velocity network
    :math:`v_\phi(u_t, t, c)` is trained on the simulations :math:`(u_i, c_i)` by conditional
    flow matching,

    .. math:: \min_\phi \; E_{i, t, \epsilon} \left\| v_\phi(u_{i,t}, t, c_i)
        - (\epsilon - u_i) \right\|^2,

    whose minimiser is the velocity of the probability path from :math:`p(u \mid c)` to
    :math:`\mathcal{N}(0, I)` for every context at once (Dax et al., 2023). The estimator is a
    :class:`~condgen.priors.FlowMatchingPrior` (:attr:`prior`) whose context is the
    observation, so draws and densities come from the priors' samplers and ODE likelihood.

    Defaults: a residual MLP of three hidden layers of 128 units, times drawn with
    ``time_power=3`` (density :math:`\propto t^{-2/3}`, heavier at the data end, as the
    power-law time prior of Dax et al. is), 64 Heun steps (129 network evaluations a draw),
    and :meth:`fit` with minibatches of a twentieth of the training set (at most 1024), Adam at
    :math:`3 \cdot 10^{-3}`, weight averaging (EMA 0.995), and early stopping after 60 epochs
    on a validation loss whose times and noise are drawn from a fixed generator. The network
    and time distribution were chosen on two moons, the minibatch and stopping rules on two
    moons, SLCP and the Gaussian mixture; the measurements are in ``docs/benchmarks.md``.

    Arguments:
        model, observed, embedding, hidden: See :class:`~condgen.amortized.PathEstimator`.
        time_embedding, sampler, steps, time_power: See the same.
        args, kwargs: See the same.

    Example:
        >>> import condgen
        >>> task = condgen.evaluate.GaussianLinear(dim=2)
        >>> fmpe = condgen.amortized.FMPE(task.model, observed=["x"], hidden=(32, 32), steps=8)
        >>> # a real fit: fmpe.fit(num_simulations=10_000, seed=0)
        >>> losses = fmpe.fit(num_simulations=500, max_epochs=2, progress=False, seed=0)
        >>> fmpe.sample(task.data, 1000)["theta"].shape, fmpe.nfe  # 2 per Heun step, 1 last
        (torch.Size([1000, 2]), 17)

    References:
        | Flow Matching for Scalable Simulation-Based Inference (Dax et al., 2023)
        | https://arxiv.org/abs/2305.17161

        | Flow Matching for Generative Modeling (Lipman et al., 2023)
        | https://arxiv.org/abs/2210.02747
    """

    label = "FMPE"
    path_defaults: ClassVar[dict[str, Any]] = {
        "hidden": (128, 128, 128),
        "steps": 64,
        "time_power": 3.0,
    }
    fit_defaults: ClassVar[dict[str, Any]] = {**PathEstimator.fit_defaults, "lr": 3e-3}
    largest_batch: ClassVar[int] = 1024

    def _prior(self, network: nn.Module, sampler: str, steps: int) -> DiffusionPrior:
        return FlowMatchingPrior(
            network, event_shape=(self.latent_features,), sampler=sampler, steps=steps
        )
