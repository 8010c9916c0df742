r"""Posterior draws of a conditioned model, with weights, statistics and ArviZ conversion."""

from __future__ import annotations

__all__ = ["Posterior", "systematic_resample"]

import logging
from collections.abc import Mapping
from typing import Any

import arviz as az
import numpy as np
import torch
import xarray
from torch import Tensor

from ._resampling import systematic_resample
from .problem import Problem

_ARVIZ_1 = int(az.__version__.split(".")[0]) >= 1
_CHUNK = 1024
_ARVIZ_LOG = getattr(az, "_log", None) or logging.getLogger("arviz")
r"""ArviZ's logger: ArviZ 0.x logs through a logger object of its own (``arviz._log``), which is
not the one that ``logging.getLogger("arviz")`` returns."""


class Posterior:
    r"""Posterior draws of the latent sites of a :class:`~condgen.Problem`.

    Draws are stored per site, shaped ``[chains, draws, *site.shape]``. Weighted methods
    (importance sampling, SMC) also give ``log_weights``, shaped ``[chains, draws]`` and
    normalised so that ``log_weights.exp()`` sums to one within each chain. Methods that run
    independent particle systems (SMC) store one system per chain and weigh the chains by
    ``chain_log_weights`` (their evidence estimates :math:`\hat Z_r / \sum_s \hat Z_s`), so that
    the pooled draws (:meth:`moments`, :meth:`resample`) target the posterior, while ArviZ sees
    each system as a chain and compares them.

    Arguments:
        problem: The problem the draws condition.
        samples: Draws by latent site name, each shaped ``[chains, draws, *site.shape]``.
        log_weights: Optional log-weights, shaped ``[chains, draws]``.
        chain_log_weights: Optional log-weights of the chains, shaped ``[chains]`` (equal
            weights by default).
        stats: Run statistics: ``time_s`` always, ``nfe`` (model or network evaluations)
            where it applies, and method-specific entries.
        sample_stats: Per-draw statistics (e.g. ``diverging``, ``step_size``), each
            shaped ``[chains, draws]``; they become ArviZ's ``sample_stats`` group.
        method: The name of the method that produced the draws.

    Example:
        >>> import condgen, pyro, torch
        >>> import pyro.distributions as dist
        >>> def model():
        ...     x = pyro.sample("x", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        ...     pyro.sample("y", dist.Normal(x, 0.5).to_event(1))
        >>> post = condgen.condition(model, data={"y": torch.ones(2)}, method="nuts",
        ...                          num_samples=200, num_chains=2, warmup_steps=50,
        ...                          seed=0, progress=False)
        >>> post.samples["x"].shape  # [chains, draws, *event]
        torch.Size([2, 100, 2])
        >>> type(post.to_arviz()).__name__
        'InferenceData'
    """

    def __init__(
        self,
        problem: Problem,
        samples: Mapping[str, Tensor],
        *,
        log_weights: Tensor | None = None,
        chain_log_weights: Tensor | None = None,
        stats: Mapping[str, Any] | None = None,
        sample_stats: Mapping[str, Tensor] | None = None,
        method: str | None = None,
    ):
        self.problem = problem
        self.samples = {k: v.detach() for k, v in samples.items()}
        missing = sorted(set(problem.latent_sites) - set(self.samples))
        unknown = sorted(set(self.samples) - set(problem.latent_sites))
        if missing or unknown:
            raise ValueError(
                f"samples must have exactly the latent sites {list(problem.latent_sites)}; "
                f"missing {missing}, not latent {unknown}"
            )
        first = next(iter(self.samples.values()))
        self.num_chains, self.num_draws = first.shape[:2]
        for name, value in self.samples.items():
            expected = (self.num_chains, self.num_draws, *problem.latent_sites[name].shape)
            if tuple(value.shape) != expected:
                raise ValueError(
                    f"draws of site '{name}' have shape {tuple(value.shape)}, expected {expected}"
                )
        if log_weights is not None:
            if tuple(log_weights.shape) != (self.num_chains, self.num_draws):
                raise ValueError(
                    f"log_weights must have shape [chains, draws] = "
                    f"{[self.num_chains, self.num_draws]}, got {list(log_weights.shape)}"
                )
            log_weights = log_weights.detach()
            log_weights = log_weights - log_weights.logsumexp(-1, keepdim=True)
        self.log_weights = log_weights
        if chain_log_weights is not None:
            if tuple(chain_log_weights.shape) != (self.num_chains,):
                raise ValueError(
                    f"chain_log_weights must have shape [chains] = [{self.num_chains}], got "
                    f"{list(chain_log_weights.shape)}"
                )
            chain_log_weights = chain_log_weights.detach().log_softmax(0)
        self.chain_log_weights = chain_log_weights
        self.stats = dict(stats or {})
        self.sample_stats = {k: v.detach() for k, v in (sample_stats or {}).items()}
        self.method = method
        self.posterior_predictive: dict[str, Tensor] | None = None
        self._log_likelihood: dict[str, Tensor] | None = None
        self._per_chain: Posterior | None = None

    # ------------------------------------------------------------------------- accessors

    def flatten(self) -> dict[str, Tensor]:
        r"""Returns the draws with chains and draws merged: ``[chains * draws, *site.shape]``."""
        return {k: v.flatten(0, 1) for k, v in self.samples.items()}

    def moments(self, site: str) -> tuple[Tensor, Tensor]:
        r"""Posterior mean and standard deviation of a site, per coordinate, with the weights
        of a weighted posterior: :math:`\bar x = \sum_i w_i x_i`,
        :math:`s = (\sum_i w_i (x_i - \bar x)^2)^{1/2}` (float64).

        Returns:
            Both, shaped like the site.
        """
        x = self.samples[site].flatten(0, 1).double()
        w = self._pooled_log_weights().double().softmax(0)
        w = w.reshape(-1, *[1] * (x.dim() - 1))
        mean = (w * x).sum(0)
        return mean, (w * (x - mean) ** 2).sum(0).sqrt()

    def _pooled_log_weights(self) -> Tensor:
        r"""The log-weight of every draw, chains merged: each draw's weight within its chain
        times its chain's weight (equal weights where there are none)."""
        shape = (self.num_chains, self.num_draws)
        first = next(iter(self.samples.values()))
        log_w = self.log_weights
        if log_w is None:
            dtype = first.dtype if first.is_floating_point() else torch.get_default_dtype()
            log_w = torch.zeros(shape, dtype=dtype, device=first.device)
        if self.chain_log_weights is not None:
            log_w = log_w + self.chain_log_weights[:, None]
        return log_w.flatten()

    def _select(self, index: Tensor) -> Posterior:
        r"""One chain of the draws at ``index`` (into the merged chains and draws)."""
        samples = {
            k: v[index].reshape(*index.shape, *v.shape[1:]) for k, v in self.flatten().items()
        }
        sample_stats = {
            k: v.flatten(0, 1)[index].reshape(*index.shape, *v.shape[2:])
            for k, v in self.sample_stats.items()
        }
        if index.dim() == 1:
            samples = {k: v.unsqueeze(0) for k, v in samples.items()}
            sample_stats = {k: v.unsqueeze(0) for k, v in sample_stats.items()}
        return Posterior(
            self.problem, samples, stats=self.stats, sample_stats=sample_stats, method=self.method
        )

    def resample(self, num_samples: int | None = None, per_chain: bool = False) -> Posterior:
        r"""Resamples weighted draws into equally weighted ones (systematic resampling).

        Arguments:
            num_samples: How many draws to keep; by default as many as there are.
            per_chain: Whether to resample each chain by its own weights into as many draws,
                in random order, keeping the chains apart (what :meth:`to_arviz` shows, so
                that R-hat compares the chains); by default the chains are pooled, weighted by
                ``chain_log_weights``, into one chain of ``num_samples`` draws.

        Returns:
            An unweighted posterior. An unweighted posterior is returned unchanged when
            ``num_samples`` is None. A seeded run (``stats["seed"]``) resamples the same way at
            every call.
        """
        total = self.num_chains * self.num_draws
        if num_samples is None and self.log_weights is None:
            return self
        if per_chain:
            if num_samples is not None:
                raise ValueError(
                    "resample(per_chain=True) keeps the draws' count: omit num_samples"
                )
            if self._per_chain is None:  # cached, so that to_arviz() and predictive() agree
                self._per_chain = self._select(self._per_chain_index())
            return self._per_chain
        num_samples = total if num_samples is None else num_samples
        index = systematic_resample(self._pooled_log_weights(), num_samples, self._generator())
        return self._select(index)

    def _generator(self) -> torch.Generator | None:
        r"""A generator seeded with the run's seed (``stats["seed"]``), so that resampling a
        seeded run gives the same draws each time; None (torch's global generator) without."""
        seed = self.stats.get("seed")
        if seed is None:
            return None
        device = next(iter(self.samples.values())).device
        return torch.Generator(device=device).manual_seed(int(seed))

    def _per_chain_index(self) -> Tensor:
        rows, generator = [], self._generator()
        for c, log_w in enumerate(self.log_weights):
            index = systematic_resample(log_w, self.num_draws, generator)
            order = torch.randperm(self.num_draws, device=index.device, generator=generator)
            rows.append(c * self.num_draws + index[order])  # random order: split-R-hat halves
        return torch.stack(rows)

    # ----------------------------------------------------------------- model evaluations

    def log_likelihood(self) -> dict[str, Tensor]:
        r"""Pointwise log-likelihood of each observed site at every draw.

        Returns:
            For each observed site, :math:`\log p(y_j \mid x)` shaped
            ``[chains, draws, *batch_shape]``.
        """
        if self._log_likelihood is None:
            flat = self.flatten()
            total = self.num_chains * self.num_draws
            chunks = [
                self.problem.pointwise_log_likelihood(
                    {k: v[i : i + _CHUNK] for k, v in flat.items()}
                )
                for i in range(0, total, _CHUNK)
            ]
            self._log_likelihood = {
                name: torch.cat([c[name] for c in chunks]).unflatten(
                    0, (self.num_chains, self.num_draws)
                )
                for name in self.problem.observed_sites
            }
        return self._log_likelihood

    def predictive(self, num_samples: int | None = None) -> dict[str, Tensor]:
        r"""Draws the observed sites anew at every draw: :math:`y^{(i)} \sim p(y \mid x^{(i)})`.

        Weighted posteriors are resampled first (each chain by its own weights, as for
        :meth:`to_arviz`). The draws are kept and become ArviZ's ``posterior_predictive`` group.

        Arguments:
            num_samples: If given, the draws are first resampled to this many (one chain).

        Returns:
            Posterior predictive draws by observed site, shaped ``[chains, draws, *shape]``.
        """
        source = self.resample(num_samples, per_chain=num_samples is None)
        flat = source.flatten()
        total = source.num_chains * source.num_draws
        chunks = [
            self.problem.sample_predictive({k: v[i : i + _CHUNK] for k, v in flat.items()})
            for i in range(0, total, _CHUNK)
        ]
        self.posterior_predictive = {
            name: torch.cat([c[name] for c in chunks]).unflatten(
                0, (source.num_chains, source.num_draws)
            )
            for name in self.problem.observed_sites
        }
        return self.posterior_predictive

    # --------------------------------------------------------------------------- ArviZ

    def to_arviz(self) -> az.InferenceData | xarray.DataTree:
        r"""Converts to ArviZ: an :class:`arviz.InferenceData` with ArviZ 0.x, an
        :class:`xarray.DataTree` with ArviZ 1.x (both through ArviZ's ``from_dict``).

        Groups: ``posterior``, ``sample_stats``, ``observed_data``, ``log_likelihood`` (one
        variable per observed site, always present when the model has observations) and
        ``posterior_predictive`` once :meth:`predictive` has run. Weighted posteriors are
        resampled first, each chain by its own weights (``resample(per_chain=True)``), since
        ArviZ expects equally weighted draws; their log-weights stay in :attr:`log_weights`,
        :attr:`chain_log_weights` and :attr:`stats`.
        """
        return _to_datatree(self) if _ARVIZ_1 else _to_inference_data(self)

    def summary(self, **kwargs: Any):
        r"""ArviZ summary (mean, sd, HDI, MCSE, ESS and, with several chains, R-hat) of the
        draws; ``kwargs`` go to :func:`arviz.summary`.

        R-hat compares chains, so with one set of draws (one chain: the guidance and amortized
        methods, importance sampling, one run of SMC) it is undefined: the summary leaves its
        column out, and ArviZ's warning that the draws have fewer than two chains is not
        shown. The within-chain ESS and MCSE stay.
        """
        if self.num_chains > 1:
            return az.summary(self.to_arviz(), **kwargs)
        _ARVIZ_LOG.addFilter(_one_chain_filter)
        try:
            table = az.summary(self.to_arviz(), **kwargs)
        finally:
            _ARVIZ_LOG.removeFilter(_one_chain_filter)
        return _without_metric(table, "r_hat")

    def __repr__(self) -> str:
        sites = ", ".join(f"{k}{list(v.shape[2:])}" for k, v in self.samples.items())
        weighted = ", weighted" if self.log_weights is not None else ""
        return (
            f"Posterior(method={self.method!r}, chains={self.num_chains}, "
            f"draws={self.num_draws}{weighted}, sites=[{sites}])"
        )


def _one_chain_filter(record: logging.LogRecord) -> bool:
    r"""Drops ArviZ's "Shape validation failed" log record, which R-hat's check of the number
    of chains makes for a single chain."""
    return not record.getMessage().startswith("Shape validation failed")


def _without_metric(table: Any, metric: str) -> Any:
    r"""An :func:`arviz.summary` table without one metric, in each of its formats (``"wide"``
    and ``"long"`` data frames, ``"xarray"`` data sets)."""
    if isinstance(table, xarray.Dataset):
        return table.drop_sel(metric=metric, errors="ignore")
    if metric in table.columns:
        return table.drop(columns=metric)
    return table.drop(index=metric, errors="ignore")


def _numpy(values: Mapping[str, Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in values.items()}


def _arviz_groups(
    posterior: Posterior,
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    r"""The groups of :meth:`Posterior.to_arviz` (the non-empty ones) and its attributes."""
    source = posterior.resample(per_chain=True)
    groups = {
        "posterior": _numpy(source.samples),
        "sample_stats": _numpy(source.sample_stats),
        "observed_data": _numpy(posterior.problem.observations),
        "log_likelihood": _numpy(source.log_likelihood()),
    }
    if posterior.posterior_predictive is not None:
        groups["posterior_predictive"] = _numpy(posterior.posterior_predictive)
    attrs = {"inference_library": "condgen", "method": str(posterior.method)}
    attrs.update({k: v for k, v in posterior.stats.items() if isinstance(v, int | float | str)})
    return {k: v for k, v in groups.items() if v}, attrs


def _to_inference_data(posterior: Posterior) -> az.InferenceData:
    r"""The ArviZ 0.x export: :func:`arviz.from_dict` takes one keyword per group."""
    groups, attrs = _arviz_groups(posterior)
    return az.from_dict(**groups, attrs=attrs)


def _to_datatree(posterior: Posterior) -> xarray.DataTree:
    r"""The ArviZ 1.x export: ``arviz_base.from_dict`` (``arviz.from_dict`` in 1.x) takes the
    groups as one dict, and attributes by group (``"/"`` the root's, where ArviZ 0.x puts them),
    and returns a :class:`xarray.DataTree`. It needs ``arviz_base``, which ArviZ 1.x installs
    (and which installs beside ArviZ 0.x)."""
    try:
        from arviz_base import from_dict
    except ImportError as error:
        raise ImportError(
            "the ArviZ 1.x export needs arviz_base: pip install arviz-base (or arviz>=1)"
        ) from error
    groups, attrs = _arviz_groups(posterior)
    return from_dict(groups, attrs={"/": attrs})
