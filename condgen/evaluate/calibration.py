r"""Simulation-based calibration of any conditioning method: ranks, coverage and uniformity."""

from __future__ import annotations

__all__ = ["Calibration", "calibration"]

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .._random import check_seed
from ..conditioning import seeded
from ..methods import get as get_method
from ..methods.base import Method
from ..problem import Problem
from .parallel import map_jobs
from .ranks import (
    check_alpha,
    coordinate_label,
    ecdf_uniformity_test,
    rank_columns,
    rank_coverage,
)
from .runs import simulate_ranks, simulation_seeds

_SUMMARY_LEVELS = (0.5, 0.9, 0.95)


# --------------------------------------------------------------------------------- result


class Calibration:
    r"""Ranks of simulated truths among posterior draws, as simulation-based calibration gives.

    For simulation :math:`i`, a truth :math:`x_i \sim p(x)` and data :math:`y_i \sim p(y \mid
    x_i)` are drawn from the model, the method draws :math:`x_i^{(1)}, \dots, x_i^{(L)}` from
    its posterior given :math:`y_i`, and each coordinate gets the rank

    .. math:: r_i = \#\{l : x_i^{(l)} < x_i\} \in \{0, \dots, L\}

    (ties broken at random). If the method samples the exact posterior, the ranks are
    uniform on :math:`\{0, \dots, L\}` (Talts et al., 2018): a U shape says the posterior is
    too narrow, a hump that it is too wide, a slope that it is biased.

    Attributes:
        ranks: Ranks by latent site, integers shaped ``[num_simulations, *site.shape]``.
        num_simulations: The number :math:`N` of simulations.
        num_samples: The number :math:`L` of posterior draws per simulation.
        method: The name of the calibrated method.
        seeds: The seeds of each simulation, shaped ``[num_simulations, 3]``: the model
            simulation, ``condgen.condition(..., seed=...)`` and the tie-breaks.

    Example:
        Ranks as an exact method gives them, here each of :math:`0, \dots, 99` once (a run of
        :func:`calibration` gives them from a method and a model):

        >>> import torch
        >>> from condgen.evaluate import Calibration
        >>> cal = Calibration({"x": torch.arange(100)}, num_samples=99, method="exact")
        >>> cal.num_simulations, cal.passed()
        (100, True)

    References:
        | Validating Bayesian Inference Algorithms with Simulation-Based Calibration
          (Talts et al., 2018)
        | https://arxiv.org/abs/1804.06788
    """

    def __init__(
        self,
        ranks: Mapping[str, Tensor],
        num_samples: int,
        method: str,
        seeds: np.ndarray | None = None,
    ):
        self.ranks = {name: torch.as_tensor(value) for name, value in ranks.items()}
        self.num_samples = int(num_samples)
        self.method = method
        self.seeds = seeds
        sizes = {len(value) for value in self.ranks.values()}
        if len(sizes) != 1:
            raise ValueError(f"ranks of every site must share num_simulations, got {sizes}")
        self.num_simulations = sizes.pop()
        for name, value in self.ranks.items():
            if value.numel() and (value.min() < 0 or value.max() > self.num_samples):
                raise ValueError(f"ranks of site '{name}' must lie in [0, {self.num_samples}]")

    # -------------------------------------------------------------------------- coverage

    def expected_coverage(
        self, levels: Sequence[float] | np.ndarray | None = None
    ) -> pd.DataFrame:
        r"""Expected coverage of the central credible intervals, per coordinate and averaged.

        For a credible level :math:`\alpha`, the expected coverage is the probability that
        the truth lies in the central :math:`\alpha` interval of the marginal posterior
        draws, estimated over the simulations (Hermans et al., 2022):

        .. math:: \hat c(\alpha) = \frac{1}{N} \sum_{i=1}^N \mathbb{1}\left\{
            \left|u_i - \tfrac12\right| \le \tfrac\alpha2 \right\},
            \quad u_i = \frac{r_i + V_i}{L + 1},

        where :math:`u_i` is the truth's randomised quantile among the :math:`L` draws and
        :math:`V_i \sim U(0, 1)` is integrated out in closed form, so that a calibrated method
        has :math:`E[\hat c(\alpha)] = \alpha` exactly. Coverage below :math:`\alpha` means
        over-confident (too narrow) posteriors, above it under-confident ones.

        Arguments:
            levels: The credible levels :math:`\alpha \in [0, 1]`; by default 0, 0.05, ..., 1.

        Returns:
            A table indexed by ``level``, with one column per coordinate (``"x[0]"``) and a
            ``"mean"`` column averaging them.

        Example:
            >>> import torch
            >>> from condgen.evaluate import Calibration
            >>> cal = Calibration({"x": torch.arange(100)}, num_samples=99, method="exact")
            >>> table = cal.expected_coverage([0.5, 0.9])
            >>> list(table.index), list(table.columns)
            ([0.5, 0.9], ['x', 'mean'])
            >>> bool(abs(table.loc[0.9, "mean"] - 0.9) < 0.1)
            True

        References:
            | A Trust Crisis in Simulation-Based Inference? Your Posterior Approximations
              Can Be Unfaithful (Hermans et al., 2022)
            | https://arxiv.org/abs/2110.06581
        """
        levels = np.linspace(0, 1, 21) if levels is None else np.asarray(levels, dtype=float)
        levels = np.atleast_1d(levels)
        if levels.ndim != 1 or ((levels < 0) | (levels > 1)).any():
            raise ValueError(f"levels must be credible levels in [0, 1], got {levels}")
        labels, ranks = rank_columns(self.ranks)
        coverage = rank_coverage(ranks, levels, self.num_samples)
        table = pd.DataFrame(
            coverage,
            index=pd.Index(levels, name="level"),
            columns=[coordinate_label(*label) for label in labels],
        )
        table["mean"] = coverage.mean(1)
        return table

    # ------------------------------------------------------------------------ uniformity

    def uniformity(self, alpha: float = 0.01) -> pd.DataFrame:
        r"""Tests each coordinate's ranks for discrete uniformity with the ECDF band test.

        The statistic is the one behind the simultaneous ECDF bands of Säilynoja et al.
        (2022). With :math:`N` simulations, the ECDF of the ranks at :math:`K` points
        :math:`j_k` (all of :math:`0, \dots, L - 1`, or 100 evenly spaced ones) counts
        :math:`C_k = \#\{i : r_i \le j_k\} \sim \mathrm{Binomial}(N, z_k)` under uniformity,
        :math:`z_k = (j_k + 1) / (L + 1)`, and

        .. math:: \gamma = \min_k 2 \min\left(F_{N, z_k}(C_k),
            1 - F_{N, z_k}(C_k - 1)\right)

        is the smallest two-sided binomial tail probability along the ECDF. Its p-value
        :math:`P(\Gamma \le \gamma)` under uniformity is computed exactly (no simulation)
        by the forward recursion over the multinomial counts of Säilynoja et al. (2022),
        :math:`C_k = C_{k-1} + \mathrm{Binomial}(N - C_{k-1}, (z_k - z_{k-1}) / (1 - z_{k-1}))`.
        This test was chosen over a chi-square test of binned ranks because it needs no
        binning, is exact for discrete ranks and few simulations, has more power against the
        smooth departures that miscalibration causes (U shapes, humps, slopes), and is
        the test that the bands of :meth:`plot` draw: a coordinate fails where its ECDF
        leaves the band. The p-values are Bonferroni-corrected over all coordinates.

        Arguments:
            alpha: The family-wise significance level.

        Returns:
            A table with one row per coordinate: ``site``, ``index``, ``gamma``, ``p_value``,
            ``p_adjusted`` (Bonferroni, :math:`\min(1, D p)` over :math:`D` coordinates) and
            ``uniform`` (whether ``p_adjusted > alpha``).

        Example:
            >>> import torch
            >>> from condgen.evaluate import Calibration
            >>> u_shape = torch.tensor([0, 99] * 50)  # a too narrow posterior: truths at the ends
            >>> cal = Calibration({"x": u_shape}, num_samples=99, method="narrow")
            >>> table = cal.uniformity()
            >>> list(table.columns)
            ['site', 'index', 'gamma', 'p_value', 'p_adjusted', 'uniform']
            >>> list(table.query("not uniform").index)  # the coordinates that fail: U-shaped
            ['x']

        References:
            | Graphical Test for Discrete Uniformity and its Applications in Goodness-of-Fit
              Evaluation and Multiple Sample Comparison (Säilynoja et al., 2022)
            | https://arxiv.org/abs/2103.10522
        """
        check_alpha(alpha)
        labels, ranks = rank_columns(self.ranks)
        gamma, p_value = ecdf_uniformity_test(ranks, self.num_samples)
        p_adjusted = np.minimum(1.0, p_value * len(labels))
        return pd.DataFrame(
            {
                "site": [name for name, _ in labels],
                "index": [index for _, index in labels],
                "gamma": gamma,
                "p_value": p_value,
                "p_adjusted": p_adjusted,
                "uniform": p_adjusted > alpha,
            },
            index=pd.Index([coordinate_label(*label) for label in labels], name="coordinate"),
        )

    def passed(self, alpha: float = 0.01) -> bool:
        r"""Whether the ranks of every coordinate pass the uniformity test of
        :meth:`uniformity` at family-wise level ``alpha`` (Bonferroni-corrected)."""
        return bool(self.uniformity(alpha)["uniform"].all())

    def summary(self, alpha: float = 0.01) -> pd.DataFrame:
        r"""One row per coordinate: the uniformity test and the coverage of the central
        50%, 90% and 95% credible intervals.

        Returns:
            A table with columns ``site``, ``index``, ``p_value``, ``p_adjusted``,
            ``uniform``, ``coverage_50``, ``coverage_90`` and ``coverage_95``.
        """
        table = self.uniformity(alpha)[["site", "index", "p_value", "p_adjusted", "uniform"]]
        coverage = self.expected_coverage(_SUMMARY_LEVELS)
        for level in _SUMMARY_LEVELS:
            table[f"coverage_{round(100 * level)}"] = coverage.loc[level, table.index].to_numpy()
        return table

    # ----------------------------------------------------------------------------- plots

    def plot(self, site: str | None = None, *, alpha: float = 0.01, max_panels: int = 16):
        r"""ECDF-difference plots of the ranks with simultaneous bands, and the coverage curve.

        Each coordinate gets a panel with the ECDF of its normalised ranks minus the uniform
        CDF, and the simultaneous band of ``arviz.plot_ecdf`` (``confidence_bands=
        "optimized"``, Säilynoja et al., 2022) at probability :math:`1 - \alpha / D`, the
        Bonferroni level of :meth:`uniformity` over the :math:`D` coordinates of the
        calibration. A last panel draws the expected coverage against the credible level
        (mean over coordinates in black, each coordinate faint), the diagonal, and the
        95% binomial band of one coordinate's coverage under calibration.

        Arguments:
            site: The site to plot; by default all sites.
            alpha: The family-wise level of the bands.
            max_panels: At most this many coordinates get an ECDF panel (the first ones).

        Returns:
            A :class:`matplotlib.figure.Figure`.

        Example:
            >>> import torch
            >>> from condgen.evaluate import Calibration
            >>> ranks = torch.arange(100).reshape(50, 2)  # two coordinates
            >>> fig = Calibration({"x": ranks}, num_samples=99, method="exact").plot()
            >>> fig.savefig("sbc.png")
            >>> type(fig).__name__
            'Figure'
        """
        from .plots import plot_calibration

        return plot_calibration(
            self.ranks,
            self.num_samples,
            method=self.method,
            site=site,
            alpha=alpha,
            max_panels=max_panels,
        )

    def __repr__(self) -> str:
        sites = ", ".join(f"{k}{list(v.shape[1:])}" for k, v in self.ranks.items())
        return (
            f"Calibration(method={self.method!r}, num_simulations={self.num_simulations}, "
            f"num_samples={self.num_samples}, sites=[{sites}])"
        )


# ------------------------------------------------------------------------- simulations


def calibration(
    model: Callable,
    method: str | Method = "nuts",
    *,
    num_simulations: int = 100,
    num_samples: int = 100,
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    observed: Sequence[str] | Mapping[str, Any] | str | None = None,
    sites: Sequence[str] | str | None = None,
    seed: int = 0,
    executor: Any = None,
    progress: bool = True,
    **options: Any,
) -> Calibration:
    r"""Simulation-based calibration (SBC) of a conditioning method on a Pyro model.

    Each simulation :math:`i = 1, \dots, N` draws latent values and observations jointly
    from the model, :math:`(x_i, y_i) \sim p(x) p(y \mid x)` (the model run under
    :func:`pyro.poutine.uncondition`), conditions the model on :math:`y_i` with
    ``condgen.condition(model, {y: y_i}, method=method, num_samples=num_samples)``,
    resamples weighted draws to equal weights, and ranks the truth among the
    :math:`L` draws per coordinate,

    .. math:: r_i = \#\{l : x_i^{(l)} < x_i\} + U_i, \quad
        U_i \sim \mathcal{U}\{0, \dots, \#\{l : x_i^{(l)} = x_i\}\},

    the random tie-break keeping the ranks of discrete or boundary values uniform. Since
    :math:`x_i` is a draw from the exact posterior given :math:`y_i`, the ranks are uniform on
    :math:`\{0, \dots, L\}` whenever the method's draws are (Talts et al., 2018). The ranks are
    meaningful for independent draws: thin MCMC draws to about their effective sample size.

    Simulation :math:`i` takes three seeds from ``numpy.random.SeedSequence([seed, i])``
    (``generate_state(3)``, kept in :attr:`Calibration.seeds`): one for simulating the model,
    one passed to ``condgen.condition(seed=...)``, one for resampling and tie-breaks. A
    simulation is a function of its seeds only, so the same ``seed`` gives the same ranks
    locally and over any executor.

    Arguments:
        model: A Pyro model.
        method: A method name (see :func:`condgen.methods.available`) or a method object.
        num_simulations: The number :math:`N` of simulations, at least 2.
        num_samples: The number :math:`L` of posterior draws per simulation.
        args: Positional arguments of the model.
        kwargs: Keyword arguments of the model.
        observed: The sites to simulate and condition on: names, or a data dict as given to
            :func:`condgen.condition` (its keys name the sites; its values are not used, each
            simulation draws its own). By default, the sites the model observes itself
            (``obs=`` given). Sites observed with ``obs=`` are always drawn anew too.
        sites: The latent sites to rank; by default all latent sites.
        seed: The seed of the whole calibration (a non-negative integer).
        executor: None to run the simulations one after the other; or a
            :class:`concurrent.futures.Executor` or Dask ``distributed.Client`` (see
            :func:`condgen.evaluate.parallel.map_jobs`). The model and the method are
            pickled to reach it: use module-level model functions.
        progress: Whether to show a progress bar over the simulations.
        options: Options of the named method, as in :func:`condgen.condition`.

    Returns:
        The ranks, with coverage, uniformity tests and plots.

    Raises:
        ValueError: For ``num_simulations < 2``, ``num_samples < 1``, an unknown site in
            ``observed`` or ``sites``, no observed site, or an unknown method or option.
        ValueError, FloatingPointError: As :func:`condgen.condition` raises them when the
            method fails on a simulation (the message adds its seeds); other errors of the
            method become a :class:`RuntimeError`.

    Example:
        >>> import pyro
        >>> import pyro.distributions as dist
        >>> from condgen.evaluate import calibration
        >>> def model():
        ...     x = pyro.sample("x", dist.Normal(0.0, 1.0))
        ...     pyro.sample("y", dist.Normal(x, 0.5))
        >>> cal = calibration(model, "importance", observed=["y"], proposal="prior",
        ...                   num_simulations=200, num_samples=1000, progress=False)
        >>> cal.passed()
        True
        >>> summary = cal.summary()  # one row per coordinate: p-value and coverages
        >>> list(summary.index), bool(summary["p_value"].iloc[0] > 0.01)
        (['x'], True)
        >>> fig = cal.plot()  # rank ECDFs and coverage

    References:
        | Validating Bayesian Inference Algorithms with Simulation-Based Calibration
          (Talts et al., 2018)
        | https://arxiv.org/abs/1804.06788
    """
    if not isinstance(num_simulations, int) or num_simulations < 2:
        raise ValueError(f"num_simulations must be an integer >= 2, got {num_simulations!r}")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    seed = check_seed(seed)
    method = get_method(method, **options)
    args, kwargs = tuple(args), dict(kwargs or {})

    with seeded(seed):  # tracing draws from the prior: keep the caller's random state
        problem = Problem(model, None, args, kwargs)
    observed = problem.observation_sites(
        observed, "observed=['y'] (or observed=data, a data dict)"
    )
    latent = [name for name in problem.latent_sites if name not in observed]
    if isinstance(sites, str):
        sites = [sites]
    sites = tuple(latent if sites is None else sites)
    unknown = [name for name in sites if name not in latent]
    if unknown or not sites:
        raise ValueError(
            f"sites must name latent sites of the model, got {unknown or list(sites)}; its "
            f"latent sites (given observed={list(observed)}) are {latent}"
        )

    seeds = simulation_seeds(seed, num_simulations)
    jobs = [(model, method, args, kwargs, observed, sites, num_samples, tuple(s)) for s in seeds]
    results = map_jobs(
        simulate_ranks, jobs, executor=executor, progress=progress, desc=f"SBC {method.name}"
    )
    warned = [messages for _, _, messages in results if messages]
    if warned:
        warnings.warn(
            f"method '{method.name}' warned in {len(warned)} of {num_simulations} simulations, "
            f"first: {warned[0][0]}",
            UserWarning,
            stacklevel=2,
        )
    num_draws = {draws for _, draws, _ in results}
    if len(num_draws) != 1:
        raise RuntimeError(
            f"method '{method.name}' returned different numbers of draws {sorted(num_draws)} "
            "across simulations, so their ranks are not comparable"
        )
    ranks = {
        name: torch.as_tensor(np.stack([r[name] for r, _, _ in results])).reshape(
            num_simulations, *problem.latent_sites[name].shape
        )
        for name in sites
    }
    return Calibration(ranks, num_draws.pop(), method.name, seeds=seeds)
