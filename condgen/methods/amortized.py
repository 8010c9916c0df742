r"""Amortized conditioning: posterior estimators trained beforehand on the model's simulations."""

from __future__ import annotations

__all__ = ["AmortizedMethod", "FMPEMethod", "NPEMethod", "NPSEMethod"]

from typing import TYPE_CHECKING, ClassVar

from ..posterior import Posterior
from ..problem import Problem
from .base import Method, register

if TYPE_CHECKING:
    from ..infer.estimator import PosteriorEstimator


class AmortizedMethod(Method):
    r"""Draws from an amortized posterior estimator trained beforehand on simulations.

    The estimator :math:`q_\phi(\theta \mid x)` (a
    :class:`~condgen.infer.estimator.PosteriorEstimator` of the subclass's kind) was trained
    once on simulations of the model; conditioning on an observation :math:`x_o` is a pass
    through its network, :math:`\theta^{(l)} \sim q_\phi(\theta \mid x_o)`, with no
    retraining. The draws are as good as the estimator: check it with
    :func:`condgen.evaluate.calibration` (``calibration(model, name, estimator=...,
    observed=[...])``).

    Subclasses set :attr:`name` and :attr:`estimator_name` (the class in
    :mod:`condgen.infer`).

    Arguments:
        estimator: A trained estimator for the model, conditioned on the same observed sites
            as the data.

    Stats:
        ``nfe`` (network evaluations of one batched sampling pass), ``num_simulations`` (the
        simulations the estimator was trained on).

    Raises:
        ValueError: If the estimator is missing, untrained or of another kind, was trained for
            other observed or latent sites, or the observation's shape differs from the
            simulations'.
    """

    family = "amortized"
    estimator_name: ClassVar[str]

    def __init__(self, estimator: PosteriorEstimator | None = None):
        self.estimator = estimator

    def _check(self, problem: Problem) -> PosteriorEstimator:
        from .. import infer

        kind, name = self.estimator_name, self.name
        estimator = self.estimator
        if estimator is None:
            raise ValueError(
                f"method '{name}' needs a trained estimator: {name} = condgen.infer.{kind}("
                f"model, observed=[...]); {name}.fit(...); condition(..., method='{name}', "
                f"estimator={name})"
            )
        if not isinstance(estimator, getattr(infer, kind)):
            raise ValueError(
                f"estimator must be a condgen.infer.{kind}, got {type(estimator).__name__}"
            )
        if not estimator.trained:
            raise ValueError(f"the {kind} estimator is untrained: call estimator.fit(...) first")
        trained, given = list(estimator.observed), list(problem.observed_sites)
        if set(trained) != set(given):
            raise ValueError(
                f"the {kind} estimator was trained to condition on the sites {trained}, but the "
                f"data observe {given}; train an estimator with observed={given}"
            )
        latent = {n: tuple(s.shape) for n, s in estimator.latent_sites.items()}
        found = {n: tuple(s.shape) for n, s in problem.latent_sites.items()}
        if latent != found:
            raise ValueError(
                f"the {kind} estimator was trained for the latent sites {latent}, but the model "
                f"has {found}: was it trained for another model?"
            )
        for site_name, site in estimator.observed_sites.items():
            value = problem.observations[site_name]
            if tuple(value.shape) != tuple(site.shape):
                raise ValueError(
                    f"the observation of site '{site_name}' has shape {tuple(value.shape)}, but "
                    f"the {kind} estimator was trained on simulations of shape "
                    f"{tuple(site.shape)}"
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
            stats={"nfe": estimator.nfe, "num_simulations": int(estimator.num_simulations)},
            method=self.name,
        )

    def __repr__(self) -> str:
        estimator = "None" if self.estimator is None else f"{self.estimator_name}(...)"
        return f"{type(self).__name__}(estimator={estimator})"


@register
class NPEMethod(AmortizedMethod):
    r"""Neural posterior estimation: draws from an amortized flow trained on simulations.

    The estimator, a :class:`condgen.infer.NPE` :math:`q_\phi(\theta \mid x)`, is a conditional
    normalizing flow; a draw is one pass through it (see :class:`AmortizedMethod` for the
    checks and stats; ``nfe`` is 1).

    Arguments:
        estimator: A trained :class:`~condgen.infer.NPE` for the model, conditioned on the
            same observed sites as the data.

    Example:
        >>> import condgen, pyro, torch
        >>> import pyro.distributions as dist
        >>> def model():
        ...     x = pyro.sample("x", dist.Normal(0.0, 1.0))
        ...     pyro.sample("y", dist.Normal(x, 0.5))
        >>> npe = condgen.infer.NPE(model, observed=["y"], transforms=1)
        >>> # a real fit: npe.fit(num_simulations=10_000)
        >>> losses = npe.fit(num_simulations=300, max_epochs=1, progress=False)
        >>> post = condgen.condition(model, {"y": torch.tensor(1.0)}, method="npe",
        ...                          estimator=npe, num_samples=100, progress=False)
        >>> post.samples["x"].shape, post.method
        (torch.Size([1, 100]), 'npe')

    References:
        | Fast ε-free Inference of Simulation Models with Bayesian Conditional Density
          Estimation (Papamakarios and Murray, 2016)
        | https://arxiv.org/abs/1605.06376

        | Automatic Posterior Transformation for Likelihood-Free Inference (Greenberg et al.,
          2019)
        | https://arxiv.org/abs/1905.07488
    """

    name = "npe"
    estimator_name = "NPE"


@register
class FMPEMethod(AmortizedMethod):
    r"""Flow-matching posterior estimation: draws from an amortized conditional flow-matching
    model trained on simulations.

    The estimator, a :class:`condgen.infer.FMPE`, integrates the probability-flow ODE of its
    velocity network given the observation (see :class:`AmortizedMethod` for the checks and
    stats; ``nfe`` is the sampler's network evaluations, 129 by default).

    Arguments:
        estimator: A trained :class:`~condgen.infer.FMPE` for the model, conditioned on the
            same observed sites as the data.

    Example:
        >>> import condgen, pyro, torch
        >>> import pyro.distributions as dist
        >>> def model():
        ...     x = pyro.sample("x", dist.Normal(0.0, 1.0))
        ...     pyro.sample("y", dist.Normal(x, 0.5))
        >>> fmpe = condgen.infer.FMPE(model, observed=["y"], steps=8)
        >>> # a real fit: fmpe.fit(num_simulations=10_000)
        >>> losses = fmpe.fit(num_simulations=300, max_epochs=1, progress=False)
        >>> post = condgen.condition(model, {"y": torch.tensor(1.0)}, method="fmpe",
        ...                          estimator=fmpe, num_samples=100, progress=False)
        >>> post.samples["x"].shape, post.method
        (torch.Size([1, 100]), 'fmpe')

    References:
        | Flow Matching for Scalable Simulation-Based Inference (Dax et al., 2023)
        | https://arxiv.org/abs/2305.17161
    """

    name = "fmpe"
    estimator_name = "FMPE"


@register
class NPSEMethod(AmortizedMethod):
    r"""Neural posterior score estimation: draws from an amortized conditional diffusion model
    trained on simulations.

    The estimator, a :class:`condgen.infer.NPSE`, integrates the probability-flow ODE of its
    score network given the observation (see :class:`AmortizedMethod` for the checks and
    stats; ``nfe`` is the sampler's network evaluations, 257 by default).

    Arguments:
        estimator: A trained :class:`~condgen.infer.NPSE` for the model, conditioned on the
            same observed sites as the data.

    Example:
        >>> import condgen, pyro, torch
        >>> import pyro.distributions as dist
        >>> def model():
        ...     x = pyro.sample("x", dist.Normal(0.0, 1.0))
        ...     pyro.sample("y", dist.Normal(x, 0.5))
        >>> npse = condgen.infer.NPSE(model, observed=["y"], steps=8)
        >>> # a real fit: npse.fit(num_simulations=10_000)
        >>> losses = npse.fit(num_simulations=300, max_epochs=1, progress=False)
        >>> post = condgen.condition(model, {"y": torch.tensor(1.0)}, method="npse",
        ...                          estimator=npse, num_samples=100, progress=False)
        >>> post.samples["x"].shape, post.method
        (torch.Size([1, 100]), 'npse')

    References:
        | Sequential Neural Score Estimation: Likelihood-Free Inference with Conditional Score
          Based Diffusion Models (Sharrock et al., 2022)
        | https://arxiv.org/abs/2210.04872
    """

    name = "npse"
    estimator_name = "NPSE"
