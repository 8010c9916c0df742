r"""Amortized guides: local latents inside a data plate get their posterior from an encoder."""

from __future__ import annotations

__all__ = ["AmortizedFlowGuide", "AmortizedNormal"]

from collections.abc import Callable
from typing import Any

import pyro.distributions as dist
from pyro.infer.autoguide.initialization import init_to_median
from torch import Tensor
from torch.distributions import Distribution
from zuko.lazy import LazyDistribution

from .data_plate import _PLATE_OPTIONS, _AmortizedGuide, _datum_major
from .flows import FlowGuide, FlowLatent, build_guide_flow


class AmortizedNormal(_AmortizedGuide):
    r"""An amortized Gaussian guide: the local latents of each datum get a diagonal normal
    posterior whose parameters an encoder computes from that datum's observation.

    The model has a data plate (found as the plate holding both observed and latent sites, or
    named by ``plate``); the latent sites inside it are local (one value per datum), the
    others global. With :math:`u_i` the local latents of datum :math:`i` concatenated in
    unconstrained space,

    .. math:: q(u_i \mid x_i) = \mathcal{N}\big(u_i \mid \mu_\phi(x_i),
        \mathrm{diag}\,\sigma_\phi(x_i)^2\big), \qquad (\mu_\phi, \sigma_\phi) =
        \mathrm{encoder},

    mapped to each site's support by ``biject_to`` (with its Jacobian), and the global latents
    get a non-amortized guide (:class:`~pyro.infer.autoguide.AutoNormal` by default),
    independent of the local part. One encoder serves every datum, minibatch and new
    observation (a variational autoencoder's encoder).

    Model contract:
        * The data plate is a vectorised ``pyro.plate``; every local site and observed site in
          it has the plate as its leftmost batch dimension, so the datum is the plate axis.
        * At each call the guide declares the data plate as the model does at that call (its
          size, ``subsample_size`` or explicit ``subsample``): it runs the model up to that
          plate statement, with the global sites fixed, and stops there. Its subsample
          indices are then the model's, as in Pyro's usual ``with pyro.plate(...) as ind``
          guides; nothing after the plate statement runs twice.
        * The encoder's input is the observations of the plate's observed sites at those
          indices, one tensor ``[B, *datum_shape]`` per site (in the model's order). The guide
          reads the full observations (``[N, *datum_shape]``, ``N`` the plate's size) from, in
          order: ``observations(*args, **kwargs)`` if given; ``data[site]`` if given (the
          model is then conditioned on ``data`` with :func:`pyro.condition`, as
          ``condgen.condition`` does); otherwise the model argument (positional or keyword)
          whose rows at the plate's indices were the observed values at the first call, e.g.
          ``x`` in ``pyro.sample("x", ..., obs=x[ind])``.
        * The encoder returns ``(loc, scale)``, each ``[B, D]`` with :math:`D` the local
          latents' unconstrained size per datum (sites concatenated in the model's order), and
          ``scale > 0``. An ``nn.Module`` encoder is trained with the guide.

    Arguments:
        model: A Pyro model.
        encoder: A callable (an ``nn.Module`` to train it) from observation batches to
            ``(loc, scale)``.
        local: The local sites (default every latent site inside the data plate).
        plate: The data plate's name (default: found).
        data: Observations by site name, full size, applied with :func:`pyro.condition`.
        observations: A function of the model's arguments returning the encoder's input at full
            size (a tensor or a tuple, one per observed site of the plate).
        global_guide: A function from a model (the global part) to a guide, e.g.
            :class:`~pyro.infer.autoguide.AutoNormal` (the default) or
            :class:`~condgen.guides.FlowGuide`.
        init_loc_fn: The initialisation of the global guide.

    Example:
        >>> import pyro, torch
        >>> import pyro.distributions as dist
        >>> decoder = torch.nn.Linear(4, 16)
        >>> images = torch.bernoulli(torch.full((200, 16), 0.3))  # 200 binary "images"
        >>> def model(x, batch_size=None):
        ...     pyro.module("decoder", decoder)
        ...     with pyro.plate("data", len(x), subsample_size=batch_size) as ind:
        ...         z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([4]).to_event(1))
        ...         pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x[ind])
        >>> class Encoder(torch.nn.Module):  # x [B, 16] -> (loc, scale), [B, 4] each
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.linear = torch.nn.Linear(16, 8)
        ...     def forward(self, x):
        ...         loc, log_scale = self.linear(x).chunk(2, -1)
        ...         return loc, log_scale.exp()
        >>> from condgen.guides import AmortizedNormal
        >>> from pyro.infer import SVI, Trace_ELBO
        >>> guide = AmortizedNormal(model, Encoder())
        >>> svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
        >>> loss = svi.step(images, batch_size=100)
        >>> guide(images, batch_size=100)["z"].shape  # a draw of the local latents
        torch.Size([100, 4])

    References:
        | Auto-Encoding Variational Bayes (Kingma et al., 2013)
        | https://arxiv.org/abs/1312.6114

        | Stochastic Backpropagation and Approximate Inference in Deep Generative Models
        | (Rezende et al., 2014)
        | https://arxiv.org/abs/1401.4082
    """

    def _local_posterior(self, *batch: Tensor, inner: int = 0) -> Distribution:
        output = self.encoder(*batch)
        if not (isinstance(output, tuple | list) and len(output) == 2):
            raise ValueError("the encoder of AmortizedNormal must return (loc, scale)")
        loc, scale = (_datum_major(t, inner) for t in output)
        return dist.Normal(loc, scale).to_event(1)


class AmortizedFlowGuide(_AmortizedGuide):
    r"""An amortized normalizing-flow guide: the local latents of each datum get a conditional
    zuko flow whose context an encoder computes from that datum's observation.

    With :math:`u_i` the local latents of datum :math:`i` concatenated in unconstrained space
    and :math:`c_i = \mathrm{encoder}(x_i)`,

    .. math:: u_i = \mu(c_i) + \sigma(c_i) \odot f(\epsilon_i; c_i), \quad
        \epsilon_i \sim \mathcal{N}(0, I),

    with :math:`f` a conditional flow of :func:`~condgen.guides.build_guide_flow` (one pass to draw
    and score, starting at the identity) and :math:`(\mu, \log \sigma)` linear in the context,
    starting at the model's initial point and ``init_scale`` for every datum. The global latents
    get a :class:`~condgen.guides.FlowGuide` by default. The model contract (data plate,
    observations, subsampling) is :class:`AmortizedNormal`'s; the encoder returns the context,
    ``[B, C]``.

    Arguments:
        model: A Pyro model.
        encoder: A callable (an ``nn.Module`` to train it) from observation batches to a
            context ``[B, C]``.
        flow: A name in :data:`~condgen.guides.GUIDE_FLOWS`, a factory of zuko flows (called as
            ``flow(features, context, **options)``), or a conditional zuko lazy
            distribution with ``D`` features and ``C`` context features.
        init_loc_fn: The initialisation of the local shift and of the global guide.
        init_scale: The initial scale of the local flow (1: the scale of a standard-normal
            prior on the local latents, where a VAE's guide usually starts).
        options: The data plate's options of :class:`AmortizedNormal` (``local``, ``plate``,
            ``data``, ``observations``, ``global_guide``: by default a
            :class:`~condgen.guides.FlowGuide` with the same flow name), and keyword arguments
            of the flow class.

    Example:
        >>> import pyro, torch
        >>> import pyro.distributions as dist
        >>> points = torch.randn(500, 2) + 3.0  # noisy points around unknown centres
        >>> def model(x):  # a global mean "mu", a local centre "z" per point
        ...     mu = pyro.sample("mu", dist.Normal(torch.zeros(2), 10.0).to_event(1))
        ...     with pyro.plate("points", len(x), subsample_size=50) as ind:
        ...         z = pyro.sample("z", dist.Normal(mu, 1.0).to_event(1))
        ...         pyro.sample("x", dist.Normal(z, 0.5).to_event(1), obs=x[ind])
        >>> from condgen.guides import AmortizedFlowGuide
        >>> from pyro.infer import SVI, Trace_ELBO
        >>> encoder = torch.nn.Linear(2, 4)  # x [B, 2] -> context [B, 4]
        >>> guide = AmortizedFlowGuide(model, encoder, "maf", hidden_features=(16, 16))
        >>> svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
        >>> loss = svi.step(points)
        >>> draw = guide(points)  # mu from the global FlowGuide, z from the encoder's flow
        >>> draw["mu"].shape, draw["z"].shape
        (torch.Size([2]), torch.Size([50, 2]))

    References:
        | Improved Variational Inference with Inverse Autoregressive Flow (Kingma et al., 2016)
        | https://arxiv.org/abs/1606.04934
    """

    def __init__(
        self,
        model: Callable,
        encoder: Callable,
        flow: str | Callable[..., LazyDistribution] | LazyDistribution = "nsf",
        *,
        init_loc_fn: Callable = init_to_median,
        init_scale: float = 1.0,
        **options: Any,
    ):
        if not init_scale > 0:
            raise ValueError(f"init_scale must be positive, got {init_scale}")
        plate_options = {k: options.pop(k) for k in _PLATE_OPTIONS if k in options}
        self._flow_spec = (flow,)  # a tuple: an nn.Module flow is registered once, as .flow
        self._flow_options = options
        self._init_scale = float(init_scale)
        super().__init__(model, encoder, init_loc_fn=init_loc_fn, **plate_options)

    def _setup_local(self, *batch: Tensor) -> None:
        init = self._local_init
        flow = build_guide_flow(
            self._flow_spec[0],
            self.local_dim,
            self._context_size(*batch),
            loc=init.detach().cpu(),
            scale=self._init_scale,
            **self._flow_options,
        )
        self.flow = flow.to(device=init.device, dtype=init.dtype)
        super()._setup_local(*batch)

    def _default_global_guide(self, model: Callable) -> Callable:
        spec = self._flow_spec[0]
        spec = "nsf" if isinstance(spec, LazyDistribution) else spec
        return FlowGuide(model, spec, init_loc_fn=self._init_loc_fn)

    def _local_posterior(self, *batch: Tensor, inner: int = 0) -> Distribution:
        return FlowLatent(self.flow(_datum_major(self.encoder(*batch), inner)))
