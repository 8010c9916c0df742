r"""Normalizing-flow guides: one zuko flow over all latent sites, in unconstrained space."""

from __future__ import annotations

__all__ = [
    "GUIDE_FLOWS",
    "ElementwiseAffine",
    "FlowGuide",
    "FlowLatent",
    "TrilAffine",
    "build_guide_flow",
]

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from pyro.distributions.torch_distribution import TorchDistribution
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.autoguide.initialization import init_to_median
from torch import Size, Tensor, nn
from torch.distributions import Distribution, Independent, Normal, biject_to, constraints
from zuko.distributions import NormalizingFlow
from zuko.lazy import Flow, LazyComposedTransform, LazyDistribution, LazyInverse, LazyTransform

from ..priors.flow import FLOW_CLASSES
from .affine import ElementwiseAffine, TrilAffine

GUIDE_FLOWS: dict[str, Callable[..., Flow]] = {
    name: flow for name, flow in FLOW_CLASSES.items() if name != "ncsf"
}
r"""The flows of :func:`build_guide_flow` and the guides, by name: those of the one registry,
:data:`condgen.priors.flow.FLOW_CLASSES`, over :math:`\mathbb{R}^D`. zuko's circular spline flow
(NCSF) is left out on purpose: its support is the box :math:`[-\pi, \pi]^D`, not the
unconstrained space of the latent sites."""


def _zero_last_layers(transform: nn.Module) -> bool:
    r"""Zeroes the last linear layer of every hyper-network of a lazy transformation, and the
    free parameters of its element-wise transformations (zuko's ``phi``, used instead of a
    hyper-network by a one-feature flow without context), which makes affine and spline
    transformations (MAF, NSF, RealNVP, NICE) the identity. Returns whether anything was
    zeroed."""
    changed = False
    for module in transform.modules():
        hyper = getattr(module, "hyper", None)
        linears = [m for m in hyper.modules() if isinstance(m, nn.Linear)] if hyper else []
        phi = getattr(module, "phi", None)
        with torch.no_grad():
            if linears:
                linears[-1].weight.zero_()
                if linears[-1].bias is not None:
                    linears[-1].bias.zero_()
                changed = True
            if isinstance(phi, nn.ParameterList) and len(phi) > 0:
                for p in phi:
                    p.zero_()
                changed = True
    return changed


def _is_identity(transform: LazyTransform, features: int, context: int) -> bool:
    generator = torch.Generator().manual_seed(0)  # leaves the global generator alone
    probe = 3 * torch.randn(16, features, generator=generator)
    c = torch.randn(16, context, generator=generator) if context else None
    with torch.no_grad():
        try:
            y = transform(c)(probe)
        except Exception:  # any failure means "not the identity"
            return False
    return bool(torch.allclose(y, probe, atol=1e-5))


def build_guide_flow(
    flow: str | Callable[..., LazyDistribution] | LazyDistribution,
    features: int,
    context: int = 0,
    *,
    loc: Tensor | None = None,
    scale: float | Tensor = 1.0,
    scale_tril: bool = False,
    **options: Any,
) -> LazyDistribution:
    r"""Builds the lazy distribution of a flow guide over :math:`\mathbb{R}^D`.

    A named flow (or a factory, called as ``flow(features, context, **options)``) is built in
    the sampling direction of an inverse autoregressive flow: its transformation
    :math:`f_c` maps the base noise to the latent,

    .. math:: u = \mu_c + \sigma_c \odot f_c(\epsilon), \quad \epsilon \sim \mathcal{N}(0, I),
        \qquad \log q(u \mid c) = \log \mathcal{N}(\epsilon) - \log |\det J_{f_c}(\epsilon)|
        - \textstyle\sum_i \log \sigma_{c,i},

    so that a draw and its log-density take one pass of :math:`f_c` (MAF, NSF and NAF need
    :math:`D` passes, or a bisection, the other way). The last layer of each hyper-network is
    zeroed, so that affine and spline flows start at the identity and :math:`q` starts as
    :math:`\mathcal{N}(\mu, \sigma^2 I)`; :math:`(\mu_c, \sigma_c)` is an
    :class:`ElementwiseAffine`. A :class:`zuko.flows.Flow` instance is used in its own direction
    (sampling through the inverse of its transformation), after the same affine
    standardisation; any other lazy distribution is used as it is.

    Arguments:
        flow: A name in :data:`GUIDE_FLOWS`, a factory of zuko flows (e.g. ``zuko.flows.MAF`` or a
            :func:`functools.partial` of it) or a lazy distribution instance.
        features: The number of features :math:`D`.
        context: The number of context features (0 for an unconditional flow).
        loc: The initial shift :math:`\mu`, shaped :math:`(D,)`.
        scale: The initial scale :math:`\sigma`.
        scale_tril: Whether :math:`\sigma \odot` is a lower-triangular :math:`L`
            (:class:`TrilAffine`; unconditional flows only).
        options: Keyword arguments of the flow class (``transforms``, ``hidden_features``,
            ``bins``, ...).

    Returns:
        A lazy distribution: ``build_guide_flow(...)(c)`` is a distribution over
        :math:`\mathbb{R}^D`.

    Example:
        >>> from condgen.guides import build_guide_flow
        >>> q = build_guide_flow("nsf", 3, transforms=2, hidden_features=(32, 32))
        >>> u, log_q = q().rsample_and_log_prob((8,))
        >>> u.shape, log_q.shape
        (torch.Size([8, 3]), torch.Size([8]))

    References:
        | Improved Variational Inference with Inverse Autoregressive Flow (Kingma et al., 2016)
        | https://arxiv.org/abs/1606.04934
    """
    if scale_tril and context > 0:
        raise ValueError("scale_tril=True needs an unconditional flow (context=0)")
    if scale_tril:
        affine = TrilAffine(features, loc=loc, scale=scale)
    else:
        affine = ElementwiseAffine(features, context, loc=loc, scale=scale)
    if isinstance(flow, str):
        if flow not in GUIDE_FLOWS:
            hint = " (a circular flow, for angles)" if flow == "ncsf" else ""
            raise ValueError(f"unknown flow {flow!r}{hint}; flow names are {sorted(GUIDE_FLOWS)}")
        flow = GUIDE_FLOWS[flow]
    if isinstance(flow, LazyDistribution):
        if options:
            raise ValueError(f"flow options {sorted(options)} need a flow name or factory")
        if isinstance(flow, Flow):
            return Flow([LazyInverse(affine), flow.transform], flow.base)
        return flow
    if not callable(flow):
        raise ValueError(
            f"flow must be a name in {sorted(GUIDE_FLOWS)}, a factory of zuko flows or a zuko "
            f"LazyDistribution, got {flow!r}"
        )
    built = flow(features, context, **options)
    if not isinstance(built, Flow):
        if isinstance(built, LazyDistribution):
            return built
        raise ValueError(f"the flow factory returned {type(built).__name__}, not a zuko Flow")
    transform = built.transform
    state = {k: v.clone() for k, v in transform.state_dict().items()}
    if _zero_last_layers(transform) and not _is_identity(transform, features, context):
        transform.load_state_dict(state)
    return Flow(LazyInverse(LazyComposedTransform(transform, affine)), built.base)


@contextmanager
def _detached_parameters(module: nn.Module) -> Iterator[None]:
    r"""Within the block, every parameter of ``module`` reads as its detached value (unlike
    :func:`torch.func.functional_call`, this works under :func:`torch.jit.trace`, as in Pyro's
    ``JitTrace_ELBO``)."""
    found = [
        (owner, name, value)
        for owner in module.modules()
        for name, value in owner._parameters.items()
        if value is not None
    ]
    try:
        for owner, name, value in found:
            owner._parameters[name] = value.detach()
        yield
    finally:
        for owner, name, value in found:
            owner._parameters[name] = value


NUM_FIXED_DRAWS = 8192
r"""The number of draws behind the flow guides' medians, quantiles and moments (a quantile at
level :math:`p` then has a Monte Carlo error of about :math:`\sqrt{p(1 - p) / N} / q'(p)`: 0.027
standard deviations at :math:`p = 0.1`, 0.014 at the median)."""

FIXED_SEED = 0
r"""The seed of the draws behind the flow guides' medians, quantiles and moments."""


def _normal_of(base: Distribution) -> tuple[Tensor, Tensor] | None:
    r"""The ``(loc, scale)`` of a (reinterpreted) normal distribution, else None."""
    while isinstance(base, Independent):
        base = base.base_dist
    if isinstance(base, Normal):
        return base.loc, base.scale
    return None


class FlowLatent(TorchDistribution):
    r"""A Pyro distribution over :math:`\mathbb{R}^D` from a torch one (e.g. a zuko flow
    ``flow(c)``), with Pyro's batching and a cache of the density of its own draws.

    A draw's log-density is computed with the draw (zuko's ``rsample_and_log_prob``), and
    ``log_prob`` of that same tensor returns it, so that an ELBO never inverts the flow. Other
    values go through the distribution's ``log_prob``.

    Arguments:
        base: A distribution with event shape :math:`(D,)`; its batch shape must broadcast to
            the right of ``batch_shape``.
        batch_shape: The batch shape (default the base's).
        log_prob_fixed: The log-density with the distribution's parameters held fixed
            (gradients flow through the value only); given, ``log_prob`` of a cached draw has
            the cached value and this function's gradient (the path derivative).
    """

    arg_constraints: ClassVar[dict] = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(
        self,
        base: Distribution,
        batch_shape: Size | None = None,
        log_prob_fixed: Callable[[Tensor], Tensor] | None = None,
    ):
        self.base, self.log_prob_fixed = base, log_prob_fixed
        batch_shape = base.batch_shape if batch_shape is None else Size(batch_shape)
        torch.broadcast_shapes(base.batch_shape, batch_shape)
        self._cache: tuple[Tensor, Tensor] | None = None
        super().__init__(batch_shape, base.event_shape, validate_args=False)

    def expand(self, batch_shape: Size, _instance: FlowLatent | None = None) -> FlowLatent:
        return FlowLatent(self.base, Size(batch_shape), self.log_prob_fixed)

    def rsample_and_log_prob(self, sample_shape: tuple[int, ...] = ()) -> tuple[Tensor, Tensor]:
        r"""Draws values and their log-density in one pass."""
        base, extra = self.base, len(self.batch_shape) - len(self.base.batch_shape)
        if tuple(self.batch_shape[extra:]) != tuple(base.batch_shape):
            base = base.expand(self.batch_shape[extra:])
        shape = Size(sample_shape) + self.batch_shape[:extra]
        if hasattr(base, "rsample_and_log_prob"):
            value, log_q = base.rsample_and_log_prob(shape)
        else:
            value = base.rsample(shape)
            log_q = base.log_prob(value)
        self._cache = (value, log_q)
        return value, log_q

    def rsample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        return self.rsample_and_log_prob(sample_shape)[0]

    def log_prob(self, value: Tensor) -> Tensor:
        if self._cache is not None and value is self._cache[0]:
            log_q = self._cache[1]
            if self.log_prob_fixed is None or not value.requires_grad:
                return log_q
            path = self.log_prob_fixed(value)
            return log_q.detach() + (path - path.detach())
        log_q = self.base.log_prob(value)
        return log_q.expand(torch.broadcast_shapes(log_q.shape, self.batch_shape))

    def fixed_draws(self, num_draws: int = NUM_FIXED_DRAWS) -> Tensor:
        r"""Deterministic antithetic draws, shaped ``[num_draws, *base.batch_shape, D]``: the
        same tensor at every call for the same parameters, without touching the global random
        state.

        For a zuko flow :math:`u = g(z)` with a normal base :math:`\mathcal{N}(m, s^2)`, the
        base draws are the pairs :math:`z_k^\pm = m \pm s \odot \epsilon_k`, with
        :math:`\epsilon_1, \dots, \epsilon_{N/2}` drawn from a generator seeded with
        :data:`FIXED_SEED`; each of :math:`z^+, z^-` is a draw from the base, so averages over
        them are unbiased, and they are exactly symmetric about :math:`m`. Hence when :math:`g`
        is affine (a flow at its identity, where :math:`q = \mathcal{N}(\mu, \sigma^2 I)`),
        the draws are symmetric about :math:`\mu`: their mean is :math:`\mu` and their
        element-wise median (the average of the two middle order statistics, one of each
        sign) is :math:`\mu`, up to rounding. Other distributions are sampled under
        :func:`torch.random.fork_rng` with the same seed.

        Arguments:
            num_draws: The number :math:`N` of draws (even).
        """
        base, half = self.base, (num_draws + 1) // 2
        if isinstance(base, NormalizingFlow):
            normal = _normal_of(base.base)
            if normal is not None:
                loc, scale = normal
                shape = Size([half]) + torch.broadcast_shapes(loc.shape, scale.shape)
                generator = torch.Generator(device=loc.device).manual_seed(FIXED_SEED)
                eps = torch.randn(shape, generator=generator, dtype=loc.dtype, device=loc.device)
                z = torch.cat((loc + scale * eps, loc - scale * eps))
                return base.transform.inv(z)
        with torch.random.fork_rng():
            torch.manual_seed(FIXED_SEED)
            return base.sample(Size([2 * half]))

    def _moments(self) -> tuple[Tensor, Tensor]:
        draws = self.fixed_draws()
        shape = self.batch_shape + self.event_shape
        return draws.mean(0).expand(shape), draws.var(0).expand(shape)

    @property
    def mean(self) -> Tensor:
        r"""The mean :math:`\mathbb{E}_q[u]`, a Monte Carlo estimate over
        :meth:`fixed_draws` (deterministic; exact for a flow at its identity)."""
        return self._moments()[0]

    @property
    def variance(self) -> Tensor:
        r"""The element-wise variance :math:`\mathrm{Var}_q[u_i]`, the unbiased sample
        variance of :meth:`fixed_draws` (deterministic; a flow has no closed form)."""
        return self._moments()[1]


class FlowGuide(AutoContinuous):
    r"""A normalizing-flow guide: one zuko flow over all latent sites, concatenated in
    unconstrained space.

    As in :class:`~pyro.infer.autoguide.AutoContinuous` (ADVI), each latent site is mapped to
    unconstrained space by :math:`T_s = ` ``biject_to(support)`` and the pieces are
    concatenated into :math:`u \in \mathbb{R}^D`. The guide is

    .. math:: u = \mu + \sigma \odot f(\epsilon), \quad \epsilon \sim \mathcal{N}(0, I),
        \qquad x_s = T_s(u_s),

    with :math:`f` a zuko flow (see :func:`build_guide_flow`) and, by change of variables,

    .. math:: \log q(x) = \log q(u) - \sum_s \log |\det J_{T_s}(u_s)|,

    the Jacobian term being carried by the sites' :class:`~pyro.distributions.Delta`
    log-densities, so the ELBO is right on constrained supports. :math:`\mu` starts at the
    model's initial point (``init_loc_fn``) and :math:`\sigma` at ``init_scale``; the named
    affine and spline flows start at the identity, so training starts from
    :math:`\mathcal{N}(\mu, \sigma^2 I)`. Draws and their density take one pass of the flow
    (the inverse-autoregressive direction).

    The guide is a Pyro guide like any autoguide: it works with :class:`pyro.infer.SVI` (with
    vectorised particles too), :class:`pyro.infer.Predictive` and ``condgen.condition(...,
    method="svi", guide="flow")``. Fitted by maximising the ELBO it minimises
    :math:`\mathrm{KL}(q \| p)`: mode-seeking, it can miss modes and under-disperse, less so
    than a Gaussian guide.

    With ``scale_tril=True`` the affine layer is :math:`u = \mu + L f(\epsilon)`, :math:`L` lower
    triangular (:class:`TrilAffine`), so that at :math:`f = \mathrm{id}` the guide is any
    Gaussian, as :class:`~pyro.infer.autoguide.AutoMultivariateNormal`: on a Gaussian posterior
    with correlations the exact answer is then in the family without the flow's help.

    :meth:`median` and :meth:`quantiles` are the empirical quantiles of
    :data:`NUM_FIXED_DRAWS` fixed antithetic draws (:meth:`FlowLatent.fixed_draws`):
    deterministic, consistent with each other, and at initialisation the median is the model's
    initial point. :meth:`FlowLatent.mean` and :meth:`FlowLatent.variance` are Monte Carlo
    estimates over the same draws.

    With ``path_derivative=True`` the ELBO's gradient is the path derivative of Roeder et al.
    ("sticking the landing"): :math:`\log q` at the drawn :math:`u = g_\theta(\epsilon)` is
    evaluated with :math:`\theta` held fixed, so the gradient is

    .. math:: \nabla_\theta \big[\log p(g_\theta(\epsilon)) - \log q_{\bar\theta}(g_\theta
        (\epsilon))\big],

    which drops the score term :math:`\nabla_\theta \log q_\theta(u)` (zero mean). It is
    unbiased for ``Trace_ELBO``-type objectives (not for importance-weighted ones such as
    ``RenyiELBO``), and zero at every draw when :math:`q = p`: once the fit is exact, the
    flow's parameters stop moving, where with the total gradient they keep taking Adam steps on
    zero-mean noise. It costs a density evaluation at the draws, through the flow's inverse
    (:math:`D` passes of an autoregressive flow). Far from the posterior, a spline flow's
    :math:`\nabla_u \log q` is heavy-tailed, so start it near the answer (e.g. at the prior's
    scale, ``init_scale=1.0``, on a posterior about as wide as the prior); measured fits with
    and without it: ``docs/guides.md``.

    Arguments:
        model: A Pyro model with continuous latent sites of fixed shapes.
        flow: A name in :data:`GUIDE_FLOWS` (``"nsf"``, ``"maf"``, ``"realnvp"``, ``"naf"``, ...),
            a factory of zuko flows, or a zuko lazy distribution over :math:`\mathbb{R}^D`.
        init_loc_fn: A per-site initialisation (``pyro.infer.autoguide.init_to_*``) for
            :math:`\mu`.
        init_scale: The initial scale :math:`\sigma` in unconstrained space (0.1, as Pyro's
            Gaussian autoguides: posteriors are usually narrower than priors; 1 is the scale
            of a standard-normal prior).
        scale_tril: Whether the affine layer is lower triangular (:class:`TrilAffine`, with
            :math:`D(D - 1) / 2` more parameters) rather than element-wise.
        path_derivative: Whether the ELBO's gradient is the path derivative (see above)
            rather than the total derivative of :math:`\log q`.
        flow_options: Keyword arguments of the flow class (``transforms=3``,
            ``hidden_features=(64, 64)``, ``bins=8``, ...).

    Example:
        >>> import pyro
        >>> from condgen.evaluate import Banana
        >>> from condgen.guides import FlowGuide
        >>> task = Banana()  # a banana-shaped posterior of the site "z", in 2-D
        >>> guide = FlowGuide(task.model, "nsf", transforms=2, hidden_features=(16, 16))
        >>> optim = pyro.optim.Adam({"lr": 1e-2})
        >>> svi = pyro.infer.SVI(task.model, guide, optim, pyro.infer.Trace_ELBO())
        >>> for _ in range(50):  # a smoke run: a fit takes many more steps
        ...     loss = svi.step()
        >>> draws = pyro.infer.Predictive(task.model, guide=guide, num_samples=100)()
        >>> draws["z"].shape
        torch.Size([100, 2])

    References:
        | Variational Inference with Normalizing Flows (Rezende et al., 2015)
        | https://arxiv.org/abs/1505.05770

        | Neural Spline Flows (Durkan et al., 2019)
        | https://arxiv.org/abs/1906.04032

        | Automatic Differentiation Variational Inference (Kucukelbir et al., 2017)
        | https://arxiv.org/abs/1603.00788

        | Sticking the Landing: Simple, Lower-Variance Gradient Estimators for Variational
          Inference (Roeder et al., 2017)
        | https://arxiv.org/abs/1703.09194
    """

    def __init__(
        self,
        model: Callable,
        flow: str | Callable[..., LazyDistribution] | LazyDistribution = "nsf",
        *,
        init_loc_fn: Callable = init_to_median,
        init_scale: float = 0.1,
        scale_tril: bool = False,
        path_derivative: bool = False,
        **flow_options: Any,
    ):
        self._path_derivative = bool(path_derivative)
        if not init_scale > 0:
            raise ValueError(f"init_scale must be positive, got {init_scale}")
        self._scale_tril = bool(scale_tril)
        if isinstance(flow, str) and flow not in GUIDE_FLOWS:
            build_guide_flow(flow, 1)  # raises with the list of names
        self._flow_spec = (flow,)  # a tuple: an nn.Module flow is registered once, as .flow
        self._flow_options = flow_options
        self._init_scale = float(init_scale)
        super().__init__(model, init_loc_fn=init_loc_fn)

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        super()._setup_prototype(*args, **kwargs)
        loc = self._init_loc()
        flow = build_guide_flow(
            self._flow_spec[0],
            self.latent_dim,
            loc=loc.detach().cpu(),
            scale=self._init_scale,
            scale_tril=self._scale_tril,
            **self._flow_options,
        )
        self.flow = flow.to(device=loc.device, dtype=loc.dtype)

    def get_posterior(self, *args: Any, **kwargs: Any) -> FlowLatent:
        r"""The guide's distribution :math:`q(u)` of the concatenated unconstrained latent."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        if not (self._path_derivative and torch.is_grad_enabled()):
            return FlowLatent(self.flow())
        return FlowLatent(self.flow(), log_prob_fixed=self._log_prob_fixed)

    def _log_prob_fixed(self, value: Tensor) -> Tensor:
        flow = self.flow
        with _detached_parameters(flow):
            return flow().log_prob(value)

    @torch.no_grad()
    def quantiles(
        self, quantiles: list[float] | Tensor, *args: Any, **kwargs: Any
    ) -> dict[str, Tensor]:
        r"""Element-wise posterior quantiles of each latent site.

        A flow has no closed-form marginal quantiles, so they are the empirical quantiles
        (``torch.quantile``, linear interpolation) of the :data:`NUM_FIXED_DRAWS` antithetic
        draws of :meth:`FlowLatent.fixed_draws`, mapped to each site's support: the same draws
        at every call, so the result is deterministic, does not touch the global random
        state, and :meth:`median` is exactly the 0.5 quantile. Quantiles commute with the
        element-wise monotone maps :math:`T_s` (real, positive, interval supports); for the
        others (e.g. a simplex) they are the element-wise quantiles of :math:`T_s(u_s)`.

        At initialisation the flow is the identity, :math:`q = \mathcal{N}(\mu, \sigma^2 I)`,
        and the antithetic draws are symmetric about :math:`\mu`, so the median is
        :math:`T_s(\mu_s)`, the model's initial point (up to rounding for real sites); the
        other quantiles are Monte Carlo estimates, with an error of about
        :math:`0.03 \sigma` at levels 0.1 and 0.9.

        Arguments:
            quantiles: Levels in :math:`[0, 1]`.

        Returns:
            A dict from site name to quantiles shaped ``[len(quantiles), *site_shape]``.
        """
        latent = self.get_posterior(*args, **kwargs).fixed_draws()
        levels = torch.as_tensor(quantiles, dtype=latent.dtype, device=latent.device)
        result = {}
        for site, unconstrained in self._unpack_latent(latent):
            value = biject_to(site["fn"].support)(unconstrained)
            flat = value.reshape(len(value), -1)
            result[site["name"]] = torch.quantile(flat, levels, dim=0).reshape(
                len(levels), *value.shape[1:]
            )
        return result

    @torch.no_grad()
    def median(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        r"""Element-wise posterior medians of each latent site: ``quantiles([0.5])`` (see
        :meth:`quantiles`), equal to the model's initial point at initialisation."""
        return {k: v[0] for k, v in self.quantiles([0.5], *args, **kwargs).items()}
