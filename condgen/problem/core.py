r"""What condgen learns about a Pyro model by tracing it: sites and a vectorised likelihood."""

from __future__ import annotations

__all__ = ["Problem"]

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor

from .._checks import as_data
from .._particles import sum_per_particle, vectorized
from .checks import check_data_keys, check_vectorizable, tracing_failure
from .sites import (
    Site,
    as_observation,
    check_devices,
    check_observation,
    is_neural,
    log_prob_shape,
)
from .unconstrained import UnconstrainedSites


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
        self.data = {name: as_observation(name, value) for name, value in as_data(data).items()}
        self.conditioned_model = poutine.condition(model, data=self.data)

        trace = self._trace_once()
        sites = [s for s in trace.nodes.values() if s["type"] == "sample"]
        check_data_keys(self.data, sites)
        check_devices(sites)

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
                neural=is_neural(fn),
                observed_by_model=bool(site["infer"].get("was_observed"))
                or (site["is_observed"] and site["name"] not in self.data),
            )
            if site["is_observed"]:
                check_observation(info, site["value"])
                self.observations[info.name] = site["value"]
                self.observed_sites[info.name] = info
            else:
                self.latent_sites[info.name] = info
            self._log_prob_shapes[info.name] = log_prob_shape(fn, site["value"], info.neural)
        self.max_plate_nesting = max(
            [-f.dim for s in sites for f in s["cond_indep_stack"] if f.vectorized], default=0
        )
        floating = [s["value"] for s in sites if s["value"].is_floating_point()]
        self.device = floating[0].device if floating else torch.device("cpu")
        self.dtype = floating[0].dtype if floating else torch.get_default_dtype()
        check_vectorizable(self)

    # ----------------------------------------------------------------------------- tracing

    def _trace_once(self) -> poutine.Trace:
        tracer = poutine.trace(self.conditioned_model)
        try:
            with pyro.validation_enabled(False), torch.no_grad():
                return prune_subsample_sites(tracer.get_trace(*self.args, **self.kwargs))
        except Exception as error:
            raise ValueError(tracing_failure(self, tracer.msngr.trace, error)) from error

    def _cheap_sites(self) -> list[str]:
        sites = (*self.latent_sites.values(), *self.observed_sites.values())
        return [site.name for site in sites if not site.neural]

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

        model = vectorized(model, num_particles, self.max_plate_nesting)
        with pyro.validation_enabled(False):
            trace = poutine.trace(model).get_trace(*self.args, **self.kwargs)
        # only the sites asked for: a neural prior's log_prob may solve an ODE
        trace.compute_log_prob(site_filter=lambda name, site: name in log_prob_sites)
        return trace

    def particle_trace(
        self,
        num_particles: int,
        values: Mapping[str, Tensor] | None = None,
        log_prob_sites: Collection[str] = (),
    ) -> poutine.Trace:
        r"""Runs the conditioned model once for a batch of particles, under the outer particle
        plate at dimension :math:`-(\text{max\_plate\_nesting} + 1)`, and returns its trace.

        Every site's value and distribution carry the particle dimension first; an observed
        site's distribution is then :math:`p(y \mid x^{(i)})` for each particle, which is what
        reading a likelihood's form (its mean, its scale) needs.

        Arguments:
            num_particles: The number of particles :math:`P`.
            values: Latent values by site name, each shaped ``[num_particles, *site.shape]``;
                None to draw them from the prior.
            log_prob_sites: The sites whose log-densities the trace computes (only these: a
                neural prior's log-density may solve an ODE).

        Returns:
            The :class:`pyro.poutine.Trace` of the model, whose site values are shaped
            ``[num_particles, ...]``.

        Raises:
            ValueError: If a latent site has no value, or a value's shape does not fit its
                site.
        """
        return self._vectorized_trace(num_particles, values, log_prob_sites)

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

    def log_prior_and_likelihood(self, values: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        r"""Evaluates :math:`\log p(x)` (constrained space, no Jacobian) and :math:`\log p(y \mid
        x)` from one vectorised trace: the two terms of :meth:`log_joint`, for the cost of one.

        Arguments:
            values: Latent values by site name, each shaped ``[num_particles, *site.shape]``.

        Returns:
            Both, shaped ``[num_particles]``; differentiable in the values.
        """
        num_particles = self._num_particles(values)
        trace = self._vectorized_trace(
            num_particles, values, [*self.latent_sites, *self.observed_sites]
        )
        log_prior = self._sum_log_prob(trace, self.latent_sites, num_particles)
        return log_prior, self._sum_log_prob(trace, self.observed_sites, num_particles)

    def _sum_log_prob(self, trace: poutine.Trace, names, num_particles: int) -> Tensor:
        return sum_per_particle(
            trace, names, num_particles, self.max_plate_nesting, device=self.device,
            dtype=self.dtype,
        )  # fmt: skip

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

    def sample_prior(self, num_particles: int, batch_size: int | None = None) -> dict[str, Tensor]:
        r"""Draws latent values from the prior, in vectorised passes of ``batch_size``
        particles (default: one pass). Run on ``poutine.uncondition(model)``, this simulates
        every site, the observed ones included.

        Returns:
            Latent values by site name, each shaped ``[num_particles, *site.shape]``.
        """
        batch_size = batch_size or num_particles
        chunks = []
        for start in range(0, num_particles, batch_size):
            size = min(batch_size, num_particles - start)
            with torch.no_grad():
                chunks.append(self._latent_values(self._vectorized_trace(size, None), size))
        return {name: torch.cat([c[name] for c in chunks]) for name in self.latent_sites}

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

        guide = vectorized(guide, num_particles, self.max_plate_nesting)
        with torch.no_grad(), pyro.validation_enabled(False):
            trace = poutine.trace(guide).get_trace(*self.args, **self.kwargs)
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

    def observation_sites(
        self, observed: Sequence[str] | Mapping[str, Any] | str | None, example: str
    ) -> tuple[str, ...]:
        r"""The sites to simulate and condition on: those named in ``observed``, then those
        that the model observes itself (:attr:`Site.observed_by_model`), without repeats.

        Arguments:
            observed: Site names (or a data dict, whose keys are taken), one name, or None.
            example: A call that names the observed sites, for the message when there are none.

        Raises:
            ValueError: If a name is not a sample site of the model, or nothing is observed.
        """
        names = [observed] if isinstance(observed, str) else list(observed or [])
        sites = {**self.latent_sites, **self.observed_sites}
        unknown = [name for name in names if name not in sites]
        if unknown:
            raise ValueError(
                f"observed has {unknown}, which are not sample sites of the model; its sample "
                f"sites are {list(sites)}"
            )
        by_model = [name for name, site in sites.items() if site.observed_by_model]
        found = tuple(dict.fromkeys([*names, *by_model]))
        if not found:
            raise ValueError(
                f"the model observes no site by itself: name the sites to condition on, e.g. "
                f"{example}"
            )
        return found

    def unconstrained(
        self, names: Sequence[str] | None = None, label: str = "this method"
    ) -> UnconstrainedSites:
        r"""The latent sites ``names`` (default: all) as one flat unconstrained vector: an
        :class:`~condgen.problem.UnconstrainedSites` with ``pack`` (values to :math:`z` with
        :math:`\log|J|`) and ``unpack``.

        Raises:
            ValueError: If a site is discrete or its support has no bijection to
                :math:`\mathbb{R}^k`; the message names the site and ``label``.
        """
        names = list(self.latent_sites) if names is None else list(names)
        return UnconstrainedSites({n: self.latent_sites[n] for n in names}, label)

    def require_continuous(self, method: str, suggestion: str = "method='importance'") -> None:
        r"""Raises a :class:`ValueError` naming the first discrete latent site, if any, and
        ``suggestion``: what would work instead."""
        for name, site in self.latent_sites.items():
            if site.discrete:
                raise ValueError(
                    f"method '{method}' needs continuous latent sites, but site '{name}' has "
                    f"discrete support {site.support}; use {suggestion} or "
                    "marginalise the site out"
                )

    def __repr__(self) -> str:
        def fmt(sites: Mapping[str, Site]) -> str:
            return ", ".join(f"{n}{list(s.shape)}" for n, s in sites.items())

        return f"Problem(latent=[{fmt(self.latent_sites)}], observed=[{fmt(self.observed_sites)}])"
