r"""What condgen learns about a Pyro model by tracing it: sites and a vectorised likelihood."""

from __future__ import annotations

__all__ = ["Problem", "Site"]

import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor
from torch.distributions import constraints

from ._checks import as_data

_PARTICLES = "_condgen_particles"


@dataclass(frozen=True)
class Site:
    r"""A sample site of a traced model.

    Attributes:
        name: The site name.
        shape: The shape of one value of the site, batch (plate) dimensions included.
        event_dim: How many trailing dimensions of ``shape`` are event dimensions.
        support: The support constraint of the site's distribution.
        distribution: The distribution met at the site in the first trace.
        neural: Whether the distribution is a condgen neural prior.
    """

    name: str
    shape: torch.Size
    event_dim: int
    support: constraints.Constraint
    distribution: dist.Distribution
    neural: bool = False

    @property
    def batch_ndim(self) -> int:
        return len(self.shape) - self.event_dim

    @property
    def base(self) -> dist.Distribution:
        r"""The site's distribution unwrapped by :func:`base_distribution`."""
        return base_distribution(self.distribution)

    @property
    def discrete(self) -> bool:
        return bool(getattr(self.support, "is_discrete", False))


def base_distribution(fn: dist.Distribution) -> dist.Distribution:
    r"""``fn`` without the wrappers that only reshape or mask it (:class:`~pyro.distributions.
    Independent`, :class:`~pyro.distributions.MaskedDistribution`, expansion): for a neural
    site, the prior itself."""
    while True:
        if isinstance(fn, dist.Independent | dist.MaskedDistribution | dist.ExpandedDistribution):
            fn = fn.base_dist
        else:
            return fn


def _is_neural(fn: dist.Distribution) -> bool:
    return bool(getattr(base_distribution(fn), "is_neural_prior", False))


def _log_prob_shape(fn: dist.Distribution, value: Tensor, neural: bool) -> torch.Size:
    r"""The shape of ``fn.log_prob(value)``. A neural prior's follows from its shapes (its
    log-density solves an ODE); any other distribution is asked."""
    if neural:
        return torch.broadcast_shapes(fn.batch_shape, value.shape[: value.dim() - fn.event_dim])
    with torch.no_grad(), pyro.validation_enabled(False):
        return fn.log_prob(value).shape


class Problem:
    r"""A Pyro model conditioned on data, as every condgen method sees it.

    The model is traced once under :func:`pyro.condition` with ``data``. The trace gives the
    latent sites (name, shape, support, whether the distribution is a condgen neural prior)
    and the observed sites. The model is then run under an outer particle plate, at dimension
    :math:`-(\text{max\_plate\_nesting} + 1)`, as Pyro's vectorised ELBOs do, so that

    .. math:: \log p(y \mid x^{(i)}) \quad \text{and} \quad \log p(x^{(i)}, y)

    are evaluated for a batch of latent values :math:`x^{(1)}, \dots, x^{(P)}` in one pass.

    Arguments:
        model: A Pyro model (a callable with ``pyro.sample`` statements).
        data: Observations by site name, applied with :func:`pyro.condition`.
        args: Positional arguments of the model.
        kwargs: Keyword arguments of the model.

    Raises:
        ValueError: If a data key is not a site of the model, an observation is NaN or
            infinite, does not fit its site's shape or support, or if the model cannot be
            vectorised over particles.

    Example:
        >>> import pyro, torch
        >>> import pyro.distributions as dist
        >>> from condgen import Problem
        >>> def model(y=None):
        ...     x = pyro.sample("x", dist.Normal(0.0, 1.0))
        ...     pyro.sample("y", dist.Normal(x, 1.0), obs=y)
        >>> problem = Problem(model, data={"y": torch.tensor(0.5)})
        >>> list(problem.latent_sites), list(problem.observed_sites)
        (['x'], ['y'])
        >>> problem.log_likelihood({"x": torch.zeros(8)}).shape
        torch.Size([8])
    """

    def __init__(
        self,
        model: Callable,
        data: Mapping[str, Any] | None = None,
        args: tuple = (),
        kwargs: Mapping[str, Any] | None = None,
    ):
        self.model = model
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.data = {name: _as_observation(name, value) for name, value in as_data(data).items()}
        self.conditioned_model = poutine.condition(model, data=self.data)

        trace = self._trace_once()
        sites = [s for s in trace.nodes.values() if s["type"] == "sample"]
        self._check_data_keys(sites)
        _check_devices(sites)

        self.latent_sites: dict[str, Site] = {}
        self.observed_sites: dict[str, Site] = {}
        self.deterministic_sites: list[str] = []
        self.observations: dict[str, Tensor] = {}
        self._log_prob_shapes: dict[str, torch.Size] = {}
        for site in sites:
            if site["infer"].get("_deterministic"):
                self.deterministic_sites.append(site["name"])
                continue
            fn = site["fn"]
            info = Site(
                name=site["name"],
                shape=site["value"].shape,
                event_dim=len(fn.event_shape),
                support=fn.support,
                distribution=fn,
                neural=_is_neural(fn),
            )
            if site["is_observed"]:
                _check_observation(info, site["value"])
                self.observations[info.name] = site["value"]
                self.observed_sites[info.name] = info
            else:
                self.latent_sites[info.name] = info
            self._log_prob_shapes[info.name] = _log_prob_shape(fn, site["value"], info.neural)
        self.max_plate_nesting = max(
            [-f.dim for s in sites for f in s["cond_indep_stack"] if f.vectorized], default=0
        )
        floating = [s["value"] for s in sites if s["value"].is_floating_point()]
        self.device = floating[0].device if floating else torch.device("cpu")
        self.dtype = floating[0].dtype if floating else torch.get_default_dtype()
        self._check_vectorizable()

    # ----------------------------------------------------------------------------- tracing

    def _trace_once(self) -> poutine.Trace:
        tracer = poutine.trace(self.conditioned_model)
        try:
            with pyro.validation_enabled(False), torch.no_grad():
                return prune_subsample_sites(tracer.get_trace(*self.args, **self.kwargs))
        except Exception as error:
            raise ValueError(self._failure(tracer.msngr.trace, error)) from error

    def _failure(self, partial: poutine.Trace, error: Exception) -> str:
        r"""Why tracing failed: the error, the last sample site reached, and the sites,
        observations and arguments whose dtypes or devices disagree."""
        sites = [s for s in partial.nodes.values() if s["type"] == "sample"]
        where = f"after sample site '{sites[-1]['name']}'" if sites else "before any sample site"
        message = f"running the model with the given data failed {where}: "
        message += f"{type(error).__name__}: {error}"
        tensors = {f"site '{s['name']}'": s["value"] for s in sites}
        tensors |= {f"observation '{k}'": v for k, v in self.data.items() if k not in partial}
        arguments = {**dict(enumerate(self.args)), **self.kwargs}
        tensors |= {f"argument {k!r}": v for k, v in arguments.items() if isinstance(v, Tensor)}
        floating = {k: v for k, v in tensors.items() if v.is_floating_point()}
        for kind, key in (("dtype", lambda v: v.dtype), ("device", lambda v: v.device)):
            groups: dict[Any, list[str]] = {}
            for name, value in floating.items():
                groups.setdefault(str(key(value)), []).append(name)
            if len(groups) > 1:
                listing = "; ".join(f"{k}: {', '.join(v)}" for k, v in groups.items())
                message += (
                    f". The model's tensors disagree in {kind} ({listing}): give them one "
                    f"{kind}, e.g. with prior.to(...) for a condgen prior and .to(...) for "
                    "the observations and the model's own tensors"
                )
        return message

    def _check_data_keys(self, sites: list[dict]) -> None:
        names = {s["name"] for s in sites}
        unknown = sorted(set(self.data) - names)
        if unknown:
            raise ValueError(
                f"data has keys {unknown} that are not sample sites of the model; "
                f"its sample sites are {sorted(names)}"
            )

    def _check_vectorizable(self) -> None:
        probe = 2
        try:
            with torch.no_grad():
                trace = self._vectorized_trace(probe, None, self._cheap_sites())
        except Exception as error:
            raise ValueError(
                "the model cannot be vectorised over particles (an outer pyro.plate at dim "
                f"{-self.max_plate_nesting - 1}): {error}. Declare batch dimensions with "
                "pyro.plate, event dimensions with .to_event(n), and avoid Python control "
                "flow on sampled values."
            ) from error
        for name, site in self.latent_sites.items():
            value = trace.nodes[name]["value"]
            if value.numel() != probe * math.prod(site.shape):
                raise ValueError(
                    f"site '{name}' has shape {tuple(value.shape)} under a particle plate of "
                    f"size {probe}, expected {probe} x {tuple(site.shape)}: the model cannot be "
                    "vectorised. Declare batch dimensions with pyro.plate and event dimensions "
                    "with .to_event(n)."
                )
        for name in self._cheap_sites():
            log_prob, shape = trace.nodes[name]["log_prob"], self._log_prob_shapes[name]
            if log_prob.numel() != probe * math.prod(shape):
                raise ValueError(
                    f"the log-density of site '{name}' has shape {tuple(log_prob.shape)} under a "
                    f"particle plate of size {probe}, expected {probe} x {tuple(shape)}: the "
                    "model broadcasts a latent value against the wrong dimension. Index from "
                    "the right (e.g. (X * w).sum(-1) instead of X @ w or w.unsqueeze(-2)), so "
                    "that extra leading dimensions pass through."
                )
        self._check_particles_independent(trace, probe)

    def _check_particles_independent(self, trace: poutine.Trace, probe: int) -> None:
        # A model can have every shape right and still mix particles (e.g. x.sum() over a
        # latent without event dimensions): compare with one particle at a time.
        names = self._cheap_sites()
        vectorized = self._sum_log_prob(trace, names, probe)
        values = self._latent_values(trace, probe)
        for i in range(probe):
            single = {k: v[i] for k, v in values.items()}
            with torch.no_grad(), pyro.validation_enabled(False):
                one = poutine.trace(poutine.condition(self.conditioned_model, single)).get_trace(
                    *self.args, **self.kwargs
                )
                one.compute_log_prob(site_filter=lambda name, site: name in names)
                expected = sum(one.nodes[n]["log_prob"].sum() for n in names)
            if not torch.allclose(
                vectorized[i], torch.as_tensor(expected).to(vectorized), rtol=1e-3, atol=1e-3
            ):
                raise ValueError(
                    "the model gives different log-densities when run for several particles at "
                    "once than for one at a time: it reduces or broadcasts over a dimension "
                    "that is not its own. Declare event dimensions with .to_event(n) and batch "
                    "dimensions with pyro.plate, and reduce over the right-most dimensions only."
                )

    def _cheap_sites(self) -> list[str]:
        sites = (*self.latent_sites.values(), *self.observed_sites.values())
        return [site.name for site in sites if not site.neural]

    def _particle_plate(self, num_particles: int) -> pyro.plate:
        return pyro.plate(_PARTICLES, num_particles, dim=-self.max_plate_nesting - 1)

    def _to_vectorized(self, name: str, value: Tensor) -> Tensor:
        if name not in self.latent_sites:
            raise ValueError(
                f"values has a key '{name}' that is not a latent site; latent sites are "
                f"{list(self.latent_sites)}"
            )
        site = self.latent_sites[name]
        num_particles = value.shape[0]
        if tuple(value.shape[1:]) != tuple(site.shape):
            raise ValueError(
                f"values of site '{name}' must have shape [num_particles, "
                f"{', '.join(map(str, site.shape))}], got {tuple(value.shape)}"
            )
        pad = (1,) * (self.max_plate_nesting - site.batch_ndim)
        return value.reshape((num_particles, *pad, *site.shape))

    def _vectorized_trace(
        self,
        num_particles: int,
        values: Mapping[str, Tensor] | None,
        log_prob_sites: Collection[str] = (),
        model: Callable | None = None,
    ) -> poutine.Trace:
        model = self.conditioned_model if model is None else model
        if values is not None:
            missing = sorted(set(self.latent_sites) - set(values))
            if missing:
                raise ValueError(f"values are missing for the latent sites {missing}")
            values = {k: v for k, v in values.items() if k not in self.deterministic_sites}
            model = poutine.condition(
                model, data={k: self._to_vectorized(k, v) for k, v in values.items()}
            )

        def vectorized(*args, **kwargs):
            with self._particle_plate(num_particles):
                return model(*args, **kwargs)

        with pyro.validation_enabled(False):
            trace = poutine.trace(vectorized).get_trace(*self.args, **self.kwargs)
        # only the sites asked for: a neural prior's log_prob may solve an ODE
        trace.compute_log_prob(site_filter=lambda name, site: name in log_prob_sites)
        return trace

    @staticmethod
    def _num_particles(values: Mapping[str, Tensor]) -> int:
        sizes = {v.shape[0] for v in values.values()}
        if len(sizes) != 1:
            raise ValueError(f"values must share one leading particle dimension, got {sizes}")
        return sizes.pop()

    # ------------------------------------------------------------------------- densities

    def log_likelihood(self, values: Mapping[str, Tensor]) -> Tensor:
        r"""Evaluates :math:`\log p(y \mid x)` for a batch of latent values.

        Arguments:
            values: Latent values by site name, each shaped ``[num_particles, *site.shape]``.

        Returns:
            The log-likelihood of the observed sites, shaped ``[num_particles]``.
        """
        num_particles = self._num_particles(values)
        trace = self._vectorized_trace(num_particles, values, self.observed_sites)
        return self._sum_log_prob(trace, self.observed_sites, num_particles)

    def log_joint(self, values: Mapping[str, Tensor]) -> Tensor:
        r"""Evaluates :math:`\log p(x, y)` (constrained space, no Jacobian) for a batch of values.

        Arguments:
            values: Latent values by site name, each shaped ``[num_particles, *site.shape]``.

        Returns:
            The log-joint density, shaped ``[num_particles]``.
        """
        num_particles = self._num_particles(values)
        names = [*self.latent_sites, *self.observed_sites]
        trace = self._vectorized_trace(num_particles, values, names)
        return self._sum_log_prob(trace, names, num_particles)

    def _sum_log_prob(self, trace: poutine.Trace, names, num_particles: int) -> Tensor:
        particle_dim = self.max_plate_nesting + 1
        total = torch.zeros(num_particles, device=self.device, dtype=self.dtype)
        for name in names:
            log_prob = trace.nodes[name]["log_prob"]
            if log_prob.dim() < particle_dim:  # constant across particles
                total = total + log_prob.sum()
            else:
                start = log_prob.dim() - particle_dim + 1
                total = total + log_prob.reshape(*log_prob.shape[:start], -1).sum(-1)
        return total

    def likelihood_terms(self, values: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        r"""Evaluates :math:`\log p(y \mid x)` and the norm of the standardised (Pearson)
        residual :math:`\|(y - E[y \mid x]) / \mathrm{sd}[y \mid x]\|` in one pass.

        For a Gaussian observation the residual norm is :math:`\|y - A x\| / \sigma`; for
        Poisson counts :math:`\|(y - \lambda) / \sqrt\lambda\|`.

        Returns:
            Both, shaped ``[num_particles]``; differentiable in the values.

        Raises:
            ValueError: If an observed site's distribution has no finite mean or variance
                (at finite latent values).
        """
        num_particles = self._num_particles(values)
        trace = self._vectorized_trace(num_particles, values, self.observed_sites)
        squares = torch.zeros(num_particles, device=self.device, dtype=self.dtype)
        finite_values = all(bool(torch.isfinite(v).all()) for v in values.values())
        for name in self.observed_sites:
            site = trace.nodes[name]
            undefined = ValueError(
                f"the distribution of site '{name}' has no finite mean or variance (a Student-t "
                "with df <= 2 has none), so its residual is undefined; use a method that needs "
                "only the likelihood (e.g. 'tds')"
            )
            try:
                mean, sd = site["fn"].mean, site["fn"].stddev
            except NotImplementedError:
                raise undefined from None
            if finite_values and not bool(torch.isfinite(mean).all() & torch.isfinite(sd).all()):
                raise undefined
            residual = (site["value"] - mean) / sd
            residual = residual.expand(site["fn"].batch_shape + site["fn"].event_shape)
            squares = squares + residual.reshape(num_particles, -1).pow(2).sum(-1)
        log_lik = self._sum_log_prob(trace, self.observed_sites, num_particles)
        return log_lik, squares.sqrt()

    def pointwise_log_likelihood(self, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        r"""Evaluates :math:`\log p(y_j \mid x)` per observed site and per observation.

        Arguments:
            values: Latent values by site name, each shaped ``[num_particles, *site.shape]``.

        Returns:
            For each observed site, the unscaled log-density of each observation, shaped
            ``[num_particles, *batch_shape]``.
        """
        num_particles = self._num_particles(values)
        trace = self._vectorized_trace(num_particles, values, self.observed_sites)
        return {
            name: trace.nodes[name]["unscaled_log_prob"].reshape(
                num_particles, *self._log_prob_shapes[name]
            )
            for name in self.observed_sites
        }

    # ---------------------------------------------------------------------------- sampling

    def sample_prior(self, num_particles: int) -> dict[str, Tensor]:
        r"""Draws latent values from the prior, in one vectorised pass.

        Returns:
            Latent values by site name, each shaped ``[num_particles, *site.shape]``.
        """
        with torch.no_grad():
            trace = self._vectorized_trace(num_particles, None)
        return self._latent_values(trace, num_particles)

    def sample_guide(
        self, guide: Callable, num_particles: int
    ) -> tuple[dict[str, Tensor], Tensor]:
        r"""Draws latent values from a Pyro guide with their log-density :math:`\log q(x)`.

        The guide runs under the same particle plate as the model, as in Pyro's vectorised
        ELBOs.

        Returns:
            Latent values by site name, each shaped ``[num_particles, *site.shape]``, and
            :math:`\log q` summed over the guide's sites, shaped ``[num_particles]``.
        """

        def vectorized(*args, **kwargs):
            with self._particle_plate(num_particles):
                return guide(*args, **kwargs)

        with torch.no_grad(), pyro.validation_enabled(False):
            trace = poutine.trace(vectorized).get_trace(*self.args, **self.kwargs)
            trace.compute_log_prob()
        guide_sites = [
            name
            for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"]
        ]
        log_q = self._sum_log_prob(trace, guide_sites, num_particles)
        return self._latent_values(trace, num_particles), log_q

    def sample_predictive(self, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        r"""Draws the observed sites anew given latent values: :math:`y^{(i)} \sim p(y \mid
        x^{(i)})`.

        Returns:
            Predictive values by observed site name, each shaped ``[num_particles, *shape]``.
        """
        num_particles = self._num_particles(values)
        with torch.no_grad():
            trace = self._vectorized_trace(
                num_particles, values, model=poutine.uncondition(self.conditioned_model)
            )
        return {
            name: trace.nodes[name]["value"]
            .expand(num_particles, *trace.nodes[name]["value"].shape[1:])
            .reshape(num_particles, *site.shape)
            for name, site in self.observed_sites.items()
        }

    def _latent_values(self, trace: poutine.Trace, num_particles: int) -> dict[str, Tensor]:
        values = {}
        for name, site in self.latent_sites.items():
            if name not in trace.nodes:
                raise ValueError(f"the guide has no sample site for the latent site '{name}'")
            values[name] = trace.nodes[name]["value"].reshape(num_particles, *site.shape)
        return values

    # ---------------------------------------------------------------------------- helpers

    def require_continuous(self, method: str, suggestion: str = "importance") -> None:
        r"""Raises a :class:`ValueError` naming the first discrete latent site, if any."""
        for name, site in self.latent_sites.items():
            if site.discrete:
                raise ValueError(
                    f"method '{method}' needs continuous latent sites, but site '{name}' has "
                    f"discrete support {site.support}; use method='{suggestion}' or "
                    "marginalise the site out"
                )

    def __repr__(self) -> str:
        def fmt(sites: Mapping[str, Site]) -> str:
            return ", ".join(f"{n}{list(s.shape)}" for n, s in sites.items())

        return f"Problem(latent=[{fmt(self.latent_sites)}], observed=[{fmt(self.observed_sites)}])"


def _as_observation(name: str, value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return value
    try:
        return torch.as_tensor(value, dtype=torch.get_default_dtype())
    except Exception as error:
        raise ValueError(
            f"observation of site '{name}' must be a tensor, an array or a (nested) list of "
            f"numbers, got {type(value).__name__}"
        ) from error


def _check_devices(sites: list[dict]) -> None:
    devices: dict[str, list[str]] = {}
    for site in sites:
        if site["value"].is_floating_point():
            devices.setdefault(str(site["value"].device), []).append(f"'{site['name']}'")
    if len(devices) > 1:
        listing = "; ".join(f"{', '.join(names)} on {d}" for d, names in devices.items())
        raise ValueError(
            f"the model's sites are on different devices ({listing}): move the observations, "
            "the prior (prior.to(device)) and the model's tensors to one device"
        )


def _check_observation(site: Site, value: Tensor) -> None:
    if value.is_floating_point() and not torch.isfinite(value).all():
        bad = (~torch.isfinite(value)).sum().item()
        raise ValueError(
            f"observation of site '{site.name}' has {bad} NaN or infinite entries; remove them "
            "or mask them with poutine.mask / obs_mask"
        )
    fn = site.distribution
    shape = fn.batch_shape + fn.event_shape
    event_shape = tuple(value.shape[value.dim() - site.event_dim :]) if site.event_dim else ()
    try:
        fits = torch.broadcast_shapes(value.shape, shape) == shape
    except RuntimeError:
        fits = False
    if not fits or event_shape != tuple(fn.event_shape):
        raise ValueError(
            f"observation of site '{site.name}' has shape {tuple(value.shape)}, which does not "
            f"fit its distribution of batch shape {tuple(fn.batch_shape)} and event shape "
            f"{tuple(fn.event_shape)}; reshape the observation or the site's plates"
        )
    support_ok = fn.support.check(value)
    if not bool(torch.as_tensor(support_ok).all()):
        raise ValueError(
            f"observation of site '{site.name}' lies outside the support {fn.support} of "
            f"its distribution {type(fn).__name__}"
        )
