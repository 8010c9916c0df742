r"""Amortized conditioning: posterior estimators trained beforehand on the model's simulations."""

from __future__ import annotations

__all__ = ["NPEMethod"]

from typing import TYPE_CHECKING

from ..posterior import Posterior
from ..problem import Problem
from .base import Method, register

if TYPE_CHECKING:
    from ..infer.npe import NPE


@register
class NPEMethod(Method):
    r"""Neural posterior estimation: draws from an amortized flow trained on simulations.

    The estimator, a :class:`condgen.infer.NPE` :math:`q_\phi(\theta \mid x)`, was trained
    once on simulations of the model; conditioning on an observation :math:`x_o` is a pass
    through its flow, :math:`\theta^{(l)} \sim q_\phi(\theta \mid x_o)`, with no retraining.
    The draws are as good as the estimator: check it with
    :func:`condgen.evaluate.calibration` (``calibration(model, "npe", estimator=npe,
    observed=[...])``).

    Arguments:
        estimator: A trained :class:`~condgen.infer.NPE` for the model, conditioned on the
            same observed sites as the data.

    Stats:
        ``nfe`` (1: one batched pass through the flow), ``num_simulations`` (the simulations
        the estimator was trained on).

    Raises:
        ValueError: If the estimator is missing or untrained, was trained for other observed
            or latent sites, or the observation's shape differs from the simulations'.

    Example:
        >>> npe = condgen.infer.NPE(model, observed=["y"])
        >>> npe.fit(num_simulations=10_000)
        >>> post = condgen.condition(model, {"y": y}, method="npe", estimator=npe)

    References:
        | Fast ε-free Inference of Simulation Models with Bayesian Conditional Density
          Estimation (Papamakarios and Murray, 2016)
        | https://arxiv.org/abs/1605.06376

        | Automatic Posterior Transformation for Likelihood-Free Inference (Greenberg et al.,
          2019)
        | https://arxiv.org/abs/1905.07488
    """

    name = "npe"
    family = "amortized"

    def __init__(self, estimator: NPE | None = None):
        self.estimator = estimator

    def _check(self, problem: Problem) -> NPE:
        from ..infer.npe import NPE

        estimator = self.estimator
        if estimator is None:
            raise ValueError(
                "method 'npe' needs a trained estimator: npe = condgen.infer.NPE(model, "
                "observed=[...]); npe.fit(...); condition(..., method='npe', estimator=npe)"
            )
        if not isinstance(estimator, NPE):
            raise ValueError(
                f"estimator must be a condgen.infer.NPE, got {type(estimator).__name__}"
            )
        if not estimator.trained:
            raise ValueError("the NPE estimator is untrained: call estimator.fit(...) first")
        trained, given = list(estimator.observed), list(problem.observed_sites)
        if set(trained) != set(given):
            raise ValueError(
                f"the NPE estimator was trained to condition on the sites {trained}, but the "
                f"data observe {given}; train an estimator with observed={given}"
            )
        latent = {n: tuple(s.shape) for n, s in estimator.latent_sites.items()}
        found = {n: tuple(s.shape) for n, s in problem.latent_sites.items()}
        if latent != found:
            raise ValueError(
                f"the NPE estimator was trained for the latent sites {latent}, but the model "
                f"has {found}: was it trained for another model?"
            )
        for name, site in estimator.observed_sites.items():
            value = problem.observations[name]
            if tuple(value.shape) != tuple(site.shape):
                raise ValueError(
                    f"the observation of site '{name}' has shape {tuple(value.shape)}, but the "
                    f"NPE estimator was trained on simulations of shape {tuple(site.shape)}"
                )
        return estimator

    def run(self, problem: Problem, num_samples: int, progress: bool = True) -> Posterior:
        estimator = self._check(problem)
        draws = estimator.sample(problem.observations, num_samples)
        samples = {
            name: draws[name].to(device=problem.device).unsqueeze(0)
            for name in problem.latent_sites
        }
        for name, value in samples.items():
            if value.is_floating_point():
                samples[name] = value.to(problem.dtype)
        return Posterior(
            problem,
            samples,
            stats={"nfe": 1, "num_simulations": int(estimator.num_simulations)},
            method=self.name,
        )

    def __repr__(self) -> str:
        return f"NPEMethod(estimator={'None' if self.estimator is None else 'NPE(...)'})"
