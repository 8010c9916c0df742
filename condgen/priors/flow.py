r"""Normalizing-flow priors: a zuko flow trained by maximum likelihood, with an exact
log-density."""

from __future__ import annotations

__all__ = ["FLOW_CLASSES", "FlowPrior", "flow_from_config"]

import copy
import os
from typing import Any

import torch
import zuko
from torch import Tensor, nn

from .._training import WHOLE, Trainer, fingerprint, with_replacement
from .base import Prior
from .encoding import context_state, module_entry, prefixed
from .nets import activation_class

FLOW_CLASSES: dict[str, type[zuko.flows.Flow]] = {
    "nsf": zuko.flows.NSF,
    "ncsf": zuko.flows.NCSF,
    "maf": zuko.flows.MAF,
    "nice": zuko.flows.NICE,
    "realnvp": zuko.flows.RealNVP,
    "naf": zuko.flows.NAF,
    "unaf": zuko.flows.UNAF,
    "sospf": zuko.flows.SOSPF,
    "bpf": zuko.flows.BPF,
    "gf": zuko.flows.GF,
    "cnf": zuko.flows.CNF,
}
r"""zuko's flow classes by name: those of :meth:`FlowPrior.build`, of
:func:`flow_from_config` and of the NPE estimator (in the density direction), and, but for the
circular ``"ncsf"``, of the flow guides (:data:`condgen.guides.GUIDE_FLOWS`)."""


def _plain_options(options: dict[str, Any]) -> dict[str, Any]:
    r"""Flow options with ``torch.nn`` activation classes replaced by their names and
    sequences by lists, so that the configuration is plain data that can be saved."""
    plain = {}
    for key, value in options.items():
        if isinstance(value, type) and issubclass(value, nn.Module):
            if getattr(nn, value.__name__, None) is value:
                value = value.__name__
        elif isinstance(value, tuple | torch.Size):
            value = list(value)
        plain[key] = value
    return plain


def flow_from_config(config: dict[str, Any]) -> zuko.flows.Flow:
    r"""Builds a zuko flow from a configuration ``{"flow": name, "features": ..., "context":
    ..., **options}`` (see :meth:`FlowPrior.build`) and stores the configuration in the
    flow's ``config`` attribute, so that :func:`~condgen.priors.save_prior` can save it.

    Raises:
        ValueError: For an unknown flow name or activation.
    """
    config = dict(config)
    name = str(config.pop("flow", "nsf")).lower()
    if name not in FLOW_CLASSES:
        raise ValueError(f"unknown flow {name!r}; known flows are {sorted(FLOW_CLASSES)}")
    options = {
        key: activation_class(value) if key == "activation" else value
        for key, value in config.items()
    }
    flow = FLOW_CLASSES[name](**options)
    flow.config = {"flow": name, **_plain_options(config)}
    return flow


def _event_shape(flow: nn.Module) -> torch.Size:
    base = getattr(flow, "base", None)
    if callable(base):
        try:
            return base(None).event_shape
        except (RuntimeError, TypeError, ValueError):
            pass
    try:
        return flow().event_shape
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(
            "could not infer the flow's event shape; pass event_shape=(features,)"
        ) from None


class FlowPrior(Prior):
    r"""A prior given by a normalizing flow :math:`p(x) = p_Z(f(x)) \, |\det J_f(x)|`.

    A flow is an invertible map :math:`f` from data :math:`x` to a base variable
    :math:`z = f(x) \sim \mathcal{N}(0, I)`; by the change of variables

    .. math:: \log p(x \mid c) = \log \mathcal{N}(f(x; c); 0, I)
        + \log \left| \det \frac{\partial f(x; c)}{\partial x} \right|,

    the log-density is exact, and draws :math:`x = f^{-1}(z; c)` are reparametrised
    (:meth:`rsample`). The flow is trained by maximum likelihood (:meth:`fit`),
    :math:`\max_\phi \frac1N \sum_i \log p_\phi(x_i \mid c_i)`, which is equivalent to
    minimising :math:`\mathrm{KL}(p_\text{data} \,\|\, p_\phi)`.

    The flow is a zuko lazy distribution: ``flow()`` is the distribution :math:`p(x)` and
    ``flow(c)`` the conditional :math:`p(x \mid c)`. :meth:`build` makes one by name and
    records its configuration, so that the prior can be saved (:meth:`save`) and loaded
    (:func:`condgen.priors.load`). Spline flows (NSF) transform :math:`[-5, 5]` and are the
    identity outside, so data should be roughly standardised.

    Arguments:
        flow: A zuko flow (:class:`zuko.lazy.LazyDistribution`) over vectors.
        context: A context bound to the prior (see :meth:`given`), or None.
        event_shape: The shape ``(features,)`` of one draw; inferred from the flow's base
            distribution when None.

    Example:
        >>> import pyro, torch
        >>> from condgen.priors import FlowPrior
        >>> data = torch.randn(500, 2) * 0.5 + 1.0
        >>> prior = FlowPrior.build(features=2, flow="nsf", transforms=2)
        >>> losses = prior.fit(data, steps=20, progress=False)  # e.g. steps=2000 to fit
        >>> prior.log_prob(data[:5]).shape
        torch.Size([5])
        >>> x = pyro.sample("x", prior)
        >>> x.shape
        torch.Size([2])

    References:
        | Neural Spline Flows (Durkan et al., 2019)
        | https://arxiv.org/abs/1906.04032

        | Normalizing Flows for Probabilistic Modeling and Inference (Papamakarios et al., 2021)
        | https://arxiv.org/abs/1912.02762

        | Zuko: normalizing flows in PyTorch (Rozet et al.)
        | https://github.com/probabilists/zuko
    """

    has_rsample = True

    def __init__(
        self,
        flow: zuko.lazy.LazyDistribution,
        context: Tensor | None = None,
        event_shape: torch.Size | tuple[int, ...] | None = None,
    ):
        if not isinstance(flow, nn.Module):
            raise TypeError(f"flow must be a zuko flow (an nn.Module), got {type(flow)}")
        event_shape = _event_shape(flow) if event_shape is None else torch.Size(event_shape)
        if len(event_shape) != 1:
            raise ValueError(
                f"a flow prior's events are vectors, event_shape=(features,); got "
                f"{tuple(event_shape)}"
            )
        super().__init__(event_shape)
        self.flow = flow
        self.context = None
        if context is not None:
            self._bind(context)

    @classmethod
    def build(
        cls, features: int, context: int = 0, flow: str = "nsf", **flow_options: Any
    ) -> FlowPrior:
        r"""Makes an (untrained) flow prior from a zuko flow class chosen by name.

        Arguments:
            features: The number of features :math:`d` of the events ``(d,)``.
            context: The number of context features (0 for an unconditional prior).
            flow: The flow's name, a key of :data:`FLOW_CLASSES`: ``"nsf"`` (neural spline),
                ``"maf"`` (masked autoregressive), ``"nice"``, ``"realnvp"``, ``"ncsf"``,
                ``"naf"``, ``"unaf"``, ``"sospf"``, ``"bpf"``, ``"gf"``, ``"cnf"``.
            flow_options: Options of the zuko class, e.g. ``transforms=5``,
                ``hidden_features=[128, 128]``, ``activation="ELU"`` (a ``torch.nn``
                class or its name). Plain values keep the prior savable.

        Example:
            >>> from condgen.priors import FlowPrior
            >>> prior = FlowPrior.build(2, flow="maf", transforms=5, hidden_features=[64] * 2)
            >>> prior.event_shape, prior.sample((3,)).shape
            (torch.Size([2]), torch.Size([3, 2]))
        """
        if features < 1 or context < 0:
            raise ValueError(f"need features >= 1 and context >= 0, got {features}, {context}")
        return cls(
            flow_from_config(
                {"flow": flow, "features": features, "context": context, **flow_options}
            )
        )

    @property
    def config(self) -> dict[str, Any] | None:
        r"""The flow's configuration when it was made by :meth:`build`, else None."""
        config = getattr(self.flow, "config", None)
        return config if isinstance(config, dict) else None

    def _encode(self) -> tuple[dict, dict]:
        config = self.config
        name = None if config is None else config.get("flow")
        if config is not None:
            config = {k: v for k, v in config.items() if k != "flow"}
        entry, weights = module_entry(self.flow, FLOW_CLASSES, config, name)
        config = {"event_shape": list(self.event_shape), "flow": entry}
        return config, {**prefixed("flow", weights), **context_state(self)}

    @property
    def context_features(self) -> int | None:
        r"""The number of context features when known from :attr:`config`, else None."""
        config = self.config
        return None if config is None else int(config.get("context", 0))

    def _bind(self, context: Tensor) -> None:
        context = torch.as_tensor(context)
        if context.dim() < 1:
            raise ValueError("context must have a trailing feature dimension, e.g. shape (C,)")
        expected = self.context_features
        if expected is not None and context.shape[-1] != expected:
            raise ValueError(
                f"context has {context.shape[-1]} features, but the flow takes {expected}"
            )
        self.context = context
        self._batch_shape = context.shape[:-1]

    def given(self, context: Tensor) -> FlowPrior:
        r"""The conditional prior :math:`p(x \mid c)` as a distribution sharing the flow.

        Arguments:
            context: The context :math:`c`, shaped ``[*batch, C]``; ``batch`` becomes the
                distribution's batch shape.
        """
        conditional = copy.copy(self)
        conditional._bind(context)
        return conditional

    def _distribution(self) -> torch.distributions.Distribution:
        if self.context is None and self.context_features:
            raise ValueError(
                f"this flow is conditional ({self.context_features} context features): use "
                f"prior.given(context)"
            )
        return self.flow(self.context)

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        r"""Reparametrised draws :math:`x = f^{-1}(z; c)`, :math:`z \sim \mathcal{N}(0, I)`,
        shaped ``[*sample_shape, *batch_shape, d]``."""
        return self._distribution().rsample(torch.Size(sample_shape))

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        r"""Draws as :meth:`rsample`, without building an autograd graph."""
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, x: Tensor) -> Tensor:
        r"""The exact log-density by the change of variables, for ``x`` shaped
        ``[*batch, d]`` with any batch dimensions (as Pyro's plates make them); a bound
        context broadcasts against them."""
        self._check_event(x)
        d = self.event_shape[0]
        if self.context is None:
            batch = x.shape[:-1]
            log_p = self._distribution().log_prob(x.reshape(-1, d))
        else:
            c = self.context
            batch = torch.broadcast_shapes(x.shape[:-1], c.shape[:-1])
            x = x.expand((*batch, d)).reshape(-1, d)
            c = c.expand((*batch, c.shape[-1])).reshape(-1, c.shape[-1])
            log_p = self.flow(c).log_prob(x)
        return log_p.reshape(batch)

    def fit(
        self,
        data: Tensor,
        context: Tensor | None = None,
        steps: int = 2000,
        batch_size: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        clip: float | None = 1.0,
        progress: bool = True,
        checkpoint: str | os.PathLike | None = None,
        every: int | None = None,
        autocast: torch.dtype | None = None,
    ) -> list[float]:
        r"""Trains the flow by maximum likelihood, minimising the negative log-likelihood
        :math:`-\frac1B \sum_{i \in \text{batch}} \log p_\phi(x_i \mid c_i)` with AdamW on
        minibatches drawn uniformly with replacement. The flow (and a bound context) is
        moved to the device and dtype of ``data``.

        Arguments:
            data: Training points, shaped ``[N, d]``.
            context: Their contexts ``[N, C]`` for a conditional flow, else None.
            steps: The number of optimisation steps.
            batch_size: The minibatch size (at most ``N``).
            lr: The learning rate.
            weight_decay: AdamW's decoupled weight decay.
            clip: The maximum gradient norm, or None for no clipping.
            progress: Whether to show a progress bar with the loss.
            checkpoint: A file that makes the fit resumable (see
                :func:`~condgen.priors.training.fit_path_prior`).
            every: The steps between checkpoints (None: 100).
            autocast: None, or ``torch.bfloat16`` for mixed-precision losses (see
                :func:`~condgen.priors.training.fit_path_prior`). The flows' small MLPs and
                their Jacobians gain little from it, and their log-densities lose precision.

        Returns:
            The loss (mean negative log-likelihood) at every step.

        Raises:
            ValueError: For data (or contexts) with NaN or infinite values or wrong shapes.
            FloatingPointError: If the loss becomes NaN or infinite; the message names the
                step.
        """
        data = _as_float(data)
        d = self.event_shape[0]
        if data.dim() != 2 or data.shape[-1] != d or data.shape[0] == 0:
            raise ValueError(
                f"data must be shaped [N, {d}] with N > 0 for this prior, got {tuple(data.shape)}"
            )
        _check_finite(data, "data")
        expected = self.context_features
        if context is not None:
            context = _as_float(context).to(data)
            if context.dim() != 2 or context.shape[0] != data.shape[0]:
                raise ValueError(
                    f"context must be shaped [N, C] with N={data.shape[0]} as the data, got "
                    f"{tuple(context.shape)}"
                )
            if expected is not None and context.shape[-1] != expected:
                raise ValueError(
                    f"context has {context.shape[-1]} features, but the flow takes {expected}"
                )
            _check_finite(context, "context")
        elif expected:
            raise ValueError(
                f"this flow is conditional: fit needs context, shaped [N, {expected}]"
            )
        if steps < 0 or batch_size < 1:
            raise ValueError(f"need steps >= 0 and batch_size >= 1, got {steps}, {batch_size}")

        self.flow.to(device=data.device, dtype=data.dtype)
        if self.context is not None:
            self.context = self.context.to(data)

        def loss(index: Tensor, generator: torch.Generator | None, shard: slice = WHOLE) -> Tensor:
            index = index[shard]
            c = None if context is None else context[index]
            return -self.flow(c).log_prob(data[index]).mean()

        trainer = Trainer(
            self.flow, lr=lr, weight_decay=weight_decay, clip=clip, label="FlowPrior",
            autocast=autocast,
        )  # fmt: skip
        batches = with_replacement(len(data), min(batch_size, len(data)), steps, None, data.device)
        self.flow.eval()  # the mode the trainer restores
        identity = None
        if checkpoint is not None:
            identity = {
                "steps": steps,
                "batch_size": batch_size,
                "data": fingerprint(data, context),
            }
        history = trainer.fit(
            loss, batches, progress=progress, checkpoint=checkpoint, every=every, identity=identity
        )
        return history.steps

    def __repr__(self) -> str:
        config = self.config
        name = config["flow"] if config is not None else type(self.flow).__name__
        context = "" if self.context is None else f", context={tuple(self.context.shape)}"
        return f"FlowPrior({name}, event_shape={tuple(self.event_shape)}{context})"


def _as_float(x: Tensor) -> Tensor:
    x = torch.as_tensor(x)
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


def _check_finite(x: Tensor, name: str) -> None:
    bad = ~torch.isfinite(x)
    if bad.any():
        rows = bad.flatten(1).any(-1).nonzero().flatten()
        raise ValueError(
            f"{name} has {int(bad.sum())} NaN or infinite values (in rows "
            f"{rows[:5].tolist()}{'...' if len(rows) > 5 else ''})"
        )
