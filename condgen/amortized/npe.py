r"""Neural posterior estimation: a conditional flow :math:`q(\theta \mid x)` trained on the
model's own simulations, amortized over observations."""

from __future__ import annotations

__all__ = ["NPE"]

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..priors.flow import FLOW_CLASSES, flow_from_config
from .estimator import PosteriorEstimator

FLOW_DEFAULTS: dict[str, dict[str, Any]] = {
    "nsf": {"transforms": 3, "bins": 10},
    "maf": {"transforms": 5},
}
r"""Options of the flows that :class:`NPE` builds when none are given, by flow name (other
flows take zuko's defaults); the hidden layers of these two follow the latent dimension
(:func:`default_hidden`). Chosen on sbibm's tasks at 10,000 simulations (docs/benchmarks.md,
"Defaults of the amortized estimators"): 3 transforms of [128, 128] train in 0.43 of the time of
5 of [256, 256] on two moons, at the same C2ST."""


def default_hidden(features: int) -> list[int]:
    r"""The hidden layers of :class:`NPE`'s default flows for ``features`` latent dimensions:
    [128, 128] up to 5, [256, 256] above. On the 10-dimensional Bernoulli GLM task the narrower
    layers reached a validation loss of 0.32 against 0.17 (C2ST 0.71 against 0.69, sbibm's
    observations 1-3), while on two moons and SLCP they cost no accuracy."""
    width = 128 if features <= 5 else 256
    return [width, width]


class NPE(PosteriorEstimator):
    r"""Neural posterior estimation (NPE): an amortized posterior of a Pyro model.

    The model is simulated from its prior predictive, :math:`(\theta_i, x_i) \sim p(\theta)
    p(x \mid \theta)`, in one vectorised pass (the particle plate of :class:`~condgen.Problem`),
    where :math:`x` are the sites named by ``observed`` and :math:`\theta` all other (latent)
    sites. A conditional normalizing flow :math:`q_\phi(\theta \mid x)` is trained by maximum
    likelihood on the simulations,

    .. math:: \min_\phi \; -\frac1N \sum_{i=1}^N \log q_\phi(\theta_i \mid x_i),

    whose expectation is :math:`E_{p(x)} \mathrm{KL}(p(\theta \mid x) \,\|\,
    q_\phi(\theta \mid x))` plus a constant: the flow learns the posterior of every
    observation at once, so conditioning on a new :math:`x_o` is one pass through the network
    (Papamakarios and Murray, 2016; Greenberg et al., 2019).

    The flow works in the standardised unconstrained space of
    :class:`~condgen.amortized.PosteriorEstimator`: :math:`u = (T^{-1}(\theta) - m_z) /
    s_z`, with the context :math:`c = e((x - m_x) / s_x)`, so that

    .. math:: \log q(\theta \mid x) = \log q_\phi(u \mid c) - \sum_j \log s_{z,j}
        - \log \left| \det \frac{\partial T(z)}{\partial z} \right|.

    Training (:meth:`fit`) holds out a validation fraction of the simulations, runs Adam on
    minibatches of a twentieth of the training set (at least 16, at most 512) in epochs with a
    moving average of the weights, halves the learning rate when the validation loss stalls,
    keeps the averaged weights of the best validation loss and stops when it has not improved
    for 20 epochs (early stopping, as in ``sbi``).

    Arguments:
        model: A Pyro model. Its observed sites are drawn too: the model runs under
            :func:`pyro.poutine.uncondition`.
        observed: The names of the sites to condition on (the simulator's outputs); sites the
            model observes itself (``obs=`` given) are added. By default, only those.
        flow: The zuko flow's name (a key of :data:`condgen.priors.flow.FLOW_CLASSES`): ``"nsf"``
            (neural spline flow), ``"maf"``, ...
        embedding: An optional network applied to the standardised observations before the
            flow, trained jointly (for high-dimensional observations). It receives the
            observation shaped ``[batch, *site.shape]`` when one site is observed, else the
            flattened concatenation ``[batch, D]``, and returns ``[batch, C]``.
        args: Positional arguments of the model.
        kwargs: Keyword arguments of the model.
        flow_options: Options of the zuko flow (``transforms=``, ``hidden_features=``,
            ``bins=``, ...); defaults in :data:`FLOW_DEFAULTS` and :func:`default_hidden`.

    Raises:
        ValueError: If ``observed`` names a site the model does not have, leaves no latent
            site, the model observes nothing, a latent site is discrete, the flow is unknown,
            or the model cannot be vectorised.

    Example:
        >>> import condgen
        >>> from condgen.amortized import NPE
        >>> task = condgen.evaluate.TwoMoons()
        >>> npe = NPE(task.model, observed=["x"], transforms=2, hidden_features=(32, 32))
        >>> # a real fit: npe.fit(num_simulations=10_000, seed=0)
        >>> losses = npe.fit(num_simulations=500, max_epochs=2, progress=False, seed=0)
        >>> draws = npe.sample(task.data, 1000)
        >>> draws["theta"].shape, npe.log_prob(draws, task.data).shape
        (torch.Size([1000, 2]), torch.Size([1000]))

    References:
        | Fast ε-free Inference of Simulation Models with Bayesian Conditional Density
          Estimation (Papamakarios and Murray, 2016)
        | https://arxiv.org/abs/1605.06376

        | Automatic Posterior Transformation for Likelihood-Free Inference (Greenberg et al.,
          2019)
        | https://arxiv.org/abs/1905.07488

        | Benchmarking Simulation-Based Inference (Lueckmann et al., 2021)
        | https://arxiv.org/abs/2101.04653
    """

    label = "NPE"

    def __init__(
        self,
        model: Callable,
        observed: Sequence[str] | str | None = None,
        *,
        flow: str = "nsf",
        embedding: nn.Module | None = None,
        args: tuple = (),
        kwargs: Mapping[str, Any] | None = None,
        **flow_options: Any,
    ):
        self.flow_name = str(flow).lower()
        if self.flow_name not in FLOW_CLASSES:
            raise ValueError(f"unknown flow {flow!r}; known flows are {sorted(FLOW_CLASSES)}")
        super().__init__(model, observed, embedding=embedding, args=args, kwargs=kwargs)
        options = dict(FLOW_DEFAULTS.get(self.flow_name, {}))
        if self.flow_name in FLOW_DEFAULTS:
            options["hidden_features"] = default_hidden(self.latent_features)
        options |= flow_options
        self.flow = flow_from_config(
            {"flow": self.flow_name, "features": self.latent_features}
            | {"context": self._context_features()}
            | options
        )
        self.eval()

    def _loss(
        self, u: Tensor, context: Tensor, generator: torch.Generator | None, shard: slice
    ) -> Tensor:
        return -self.flow(context).log_prob(u[shard]).mean()

    def _sample(self, context: Tensor, num_samples: int) -> Tensor:
        return self.flow(context).sample((num_samples,))

    def _log_prob(self, u: Tensor, context: Tensor) -> Tensor:
        return self.flow(context).log_prob(u)

    def _network_config(self) -> dict[str, Any]:
        return {"flow": dict(self.flow.config)}

    @classmethod
    def _network_options(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        options = dict(config["flow"])
        del options["features"], options["context"]
        return {"flow": options.pop("flow"), **options}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, flow={self.flow_name!r}"
