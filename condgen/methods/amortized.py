r"""Amortized conditioning: methods that draw from a posterior estimator trained beforehand
on the model's simulations (``"npe"``, ``"fmpe"`` and ``"npse"``, registered on import)."""

from __future__ import annotations

__all__ = ["AmortizedMethod", "FMPEMethod", "NPEMethod", "NPSEMethod"]

from collections.abc import Mapping
from typing import Any, ClassVar

from ..amortized import FMPE, NPE, NPSE, PosteriorEstimator
from ..posterior import Posterior
from ..problem import Problem
from .base import Method, register


class AmortizedMethod(Method):
    r"""Draws from an amortized posterior estimator trained beforehand on simulations.

    The estimator :math:`q_\phi(\theta \mid x)` (a
    :class:`~condgen.amortized.PosteriorEstimator` of the class :attr:`estimator_class`) was
    trained once on simulations of the model; conditioning on an observation :math:`x_o` is
    one sampling pass of its network, :math:`\theta^{(l)} \sim q_\phi(\theta \mid x_o)`, with
    no retraining. The draws are as good as the estimator: check it with
    :func:`condgen.evaluate.calibration` (``calibration(model, name, estimator=...,
    observed=[...])``).

    A subclass is keyed by its estimator, ``class NPEMethod(AmortizedMethod,
    estimator_class=NPE)``, which sets :attr:`estimator_class` and the registered :attr:`name`
    (the estimator's label in lower case): :class:`NPEMethod` (``"npe"``), :class:`FMPEMethod`
    (``"fmpe"``) and :class:`NPSEMethod` (``"npse"``).

    With ``rounds`` instead of an estimator, the method trains one for the data at hand:
    :math:`R` sequential rounds (truncated sequential estimation, see
    :meth:`condgen.amortized.PosteriorEstimator.fit`) with ``num_simulations`` over all
    rounds, :math:`x_o` the data, then draws from it. That estimator is not amortized: it is
    valid for this observation only.

    Arguments:
        estimator: A trained estimator for the model, conditioned on the same observed sites
            as the data.
        rounds: Instead of ``estimator``: train a new one in this many rounds (1: amortized,
            on prior simulations) for the data's observation.
        num_simulations: The simulations of that training, over all rounds.
        estimator_options: Options of the new estimator's constructor (e.g.
            ``transforms=`` for NPE, ``hidden=`` for FMPE and NPSE).
        fit_options: Options of its :meth:`~condgen.amortized.PosteriorEstimator.fit` (e.g.
            ``max_epochs=``, ``truncation=``).

    Stats:
        ``nfe`` (network evaluations of one batched sampling pass: 1 for NPE, the sampler's
        for FMPE and NPSE), ``num_simulations`` (the simulations the estimator was trained
        on), ``rounds`` (its sequential rounds; 0 for an amortized estimator).

    Raises:
        ValueError: If the estimator is missing, untrained or of another kind, was trained for
            other observed or latent sites, or the observation's shape differs from the
            simulations'; if both ``estimator`` and ``rounds`` are given.

    Example:
        >>> import condgen
        >>> from condgen.amortized import NPE
        >>> task = condgen.evaluate.GaussianLinear(dim=2)
        >>> npe = NPE(task.model, observed=["x"], transforms=1)
        >>> # a real fit: npe.fit(num_simulations=10_000)
        >>> losses = npe.fit(num_simulations=300, max_epochs=1, progress=False)
        >>> post = condgen.condition(task.model, task.data, method="npe", estimator=npe,
        ...                          num_samples=100, progress=False)
        >>> post.samples["theta"].shape, post.method, post.stats["nfe"]
        (torch.Size([1, 100, 2]), 'npe', 1)
    """

    family = "amortized"
    estimator_class: ClassVar[type[PosteriorEstimator]]
    r"""The class of the estimators that the method draws from."""

    def __init_subclass__(cls, estimator_class: type[PosteriorEstimator], **options: Any):
        r"""Keys a subclass by its estimator class; its name is the estimator's label in lower
        case."""
        super().__init_subclass__(**options)
        cls.estimator_class = estimator_class
        cls.name = estimator_class.label.lower()

    def __init__(
        self,
        estimator: PosteriorEstimator | None = None,
        *,
        rounds: int | None = None,
        num_simulations: int = 10_000,
        estimator_options: Mapping[str, Any] | None = None,
        fit_options: Mapping[str, Any] | None = None,
    ):
        if estimator is not None and rounds is not None:
            raise ValueError(
                "give either estimator (trained beforehand) or rounds (to train one for the "
                "data), not both"
            )
        self.estimator = estimator
        self.rounds = rounds
        self.num_simulations = num_simulations
        self.estimator_options = dict(estimator_options or {})
        self.fit_options = dict(fit_options or {})

    def _train(self, problem: Problem, progress: bool) -> PosteriorEstimator:
        r"""A new estimator trained in :attr:`rounds` rounds for the problem's observation."""
        estimator = self.estimator_class(
            problem.model,
            observed=list(problem.observed_sites),
            args=problem.args,
            kwargs=problem.kwargs,
            **self.estimator_options,
        )
        x_o = {name: problem.observations[name] for name in estimator.observed}
        options = {"progress": progress, **self.fit_options}
        estimator.fit(self.num_simulations, rounds=self.rounds, x_o=x_o, **options)
        return estimator

    def _check(self, problem: Problem, progress: bool) -> PosteriorEstimator:
        kind, name = self.estimator_class.label, self.name
        estimator = self.estimator
        if estimator is None and self.rounds is not None:
            estimator = self._train(problem, progress)
        if estimator is None:
            raise ValueError(
                f"method '{name}' needs a trained estimator: {name} = condgen.infer.{kind}("
                f"model, observed=[...]); {name}.fit(...); condition(..., method='{name}', "
                f"estimator={name}); or rounds=R to train one for the data"
            )
        if not isinstance(estimator, self.estimator_class):
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
        estimator = self._check(problem, progress)
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
            stats={
                "nfe": estimator.nfe,
                "num_simulations": int(estimator.num_simulations),
                "rounds": len(estimator.sequential_rounds),
            },
            method=self.name,
        )

    def __repr__(self) -> str:
        if self.rounds is not None:
            return (
                f"{type(self).__name__}(rounds={self.rounds}, "
                f"num_simulations={self.num_simulations})"
            )
        estimator = "None" if self.estimator is None else f"{self.estimator_class.label}(...)"
        return f"{type(self).__name__}(estimator={estimator})"


@register
class NPEMethod(AmortizedMethod, estimator_class=NPE):
    r"""Neural posterior estimation: draws from an amortized flow trained on simulations.

    The estimator is a :class:`condgen.infer.NPE`, a conditional normalizing flow: one network
    evaluation per batch of draws."""


@register
class FMPEMethod(AmortizedMethod, estimator_class=FMPE):
    r"""Flow-matching posterior estimation: draws from an amortized conditional flow-matching
    model trained on simulations.

    The estimator is a :class:`condgen.infer.FMPE`; draws integrate the probability-flow ODE
    of its velocity network given the observation."""


@register
class NPSEMethod(AmortizedMethod, estimator_class=NPSE):
    r"""Neural posterior score estimation: draws from an amortized conditional diffusion model
    trained on simulations.

    The estimator is a :class:`condgen.infer.NPSE`; draws integrate the probability-flow ODE
    of its score network given the observation."""
