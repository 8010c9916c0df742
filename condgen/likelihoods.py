r"""Linear-Gaussian observation models, declared or detected from a Pyro model."""

from __future__ import annotations

__all__ = ["LinearGaussian", "detect_linear_gaussian", "observation_of"]

from collections.abc import Mapping
from dataclasses import dataclass

import pyro.distributions as dist
import torch
from torch import Tensor

from .problem import Problem, base_distribution


@dataclass
class LinearGaussian:
    r"""An observation :math:`y = A x + b + \sigma \odot n`, :math:`n \sim \mathcal{N}(0, I)`,
    with :math:`x` and :math:`y` flattened.

    Methods such as PiGDM need this structure. It is detected from the model by
    :func:`detect_linear_gaussian`, or declared: ``condition(..., method="pigdm",
    linear=LinearGaussian(A, sigma))``.

    Arguments:
        A: The operator, shaped ``[m, d]``.
        sigma: The noise standard deviation, a scalar or shaped ``[m]``.
        b: The offset, shaped ``[m]`` (default 0).
    """

    A: Tensor
    sigma: Tensor | float
    b: Tensor | None = None

    def __post_init__(self):
        self.A = torch.as_tensor(self.A)
        if self.A.dim() != 2:
            raise ValueError(f"A must be a matrix [m, d], got shape {tuple(self.A.shape)}")
        self.sigma = torch.as_tensor(self.sigma, dtype=self.A.dtype, device=self.A.device)
        self.sigma = self.sigma.expand(self.A.shape[0]).clone()
        if (self.sigma < 0).any():
            raise ValueError("sigma must be non-negative")
        self.b = (
            torch.zeros_like(self.A[:, 0])
            if self.b is None
            else torch.as_tensor(self.b, dtype=self.A.dtype, device=self.A.device)
        )

    def to(self, reference: Tensor) -> LinearGaussian:
        r"""The same model on the device and dtype of ``reference``."""
        return LinearGaussian(self.A.to(reference), self.sigma.to(reference), self.b.to(reference))


def _normal(site: dict) -> dist.Normal | None:
    r"""The Normal distribution of a traced site, or None where it has another one or where a
    mask or a scale (a wrapper or a Pyro handler) changes its log-density, which a closed form
    would ignore."""
    handled = site.get("mask") is not None and not bool(torch.as_tensor(site["mask"]).all())
    if handled or not bool(torch.as_tensor(site.get("scale", 1.0)).eq(1).all()):
        return None
    fn = site["fn"]
    while isinstance(fn, dist.Independent | dist.MaskedDistribution | dist.ExpandedDistribution):
        if isinstance(fn, dist.MaskedDistribution) and not bool(torch.as_tensor(fn._mask).all()):
            return None
        fn = fn.base_dist
    return fn if isinstance(fn, dist.Normal) else None


def observation_of(
    problem: Problem, site: str, method: str, fixed: Mapping[str, Tensor] | None = None
) -> str:
    r"""The one observed site whose density depends on the latent site ``site``.

    Observed sites whose density is the same at every value of ``site`` (a latent held fixed
    with :func:`pyro.condition`, an observation of other sites only) are constant factors of
    :math:`p(y \mid x)` and are not counted. The model's other latent sites, if any, take the
    values ``fixed``.

    Raises:
        ValueError: Naming the sites when none or several depend on ``site``.
    """
    shape = problem.latent_sites[site].shape
    generator = torch.Generator(device="cpu").manual_seed(0)
    points = torch.randn(3, *shape, generator=generator).to(problem.dtype).to(problem.device)
    values = {k: v.expand(len(points), *v.shape) for k, v in (fixed or {}).items()}
    values[site] = points
    with torch.no_grad():
        trace = problem.particle_trace(len(points), values)
    constant = []
    for name, info in problem.observed_sites.items():
        if info.neural:
            continue
        fn = trace.nodes[name]["fn"]
        base = base_distribution(fn)  # the density without masks, which a closed form ignores
        with torch.no_grad():
            log_prob = base.log_prob(trace.nodes[name]["value"])
        dim = problem.max_plate_nesting + 1 + len(fn.event_shape) - len(base.event_shape)
        per_particle = log_prob.movedim(-dim, 0) if log_prob.dim() >= dim else log_prob[None]
        if bool((per_particle == per_particle[:1]).all()):
            constant.append(name)
    depending = [n for n in problem.observed_sites if n not in constant]
    if len(depending) == 1:
        return depending[0]
    which = "none of the observed sites" if not depending else f"the sites {depending}"
    raise ValueError(
        f"method '{method}' needs one linear-Gaussian observation of '{site}' (a Normal site "
        f"whose mean is linear in '{site}'), but {which} of the model depend on it"
        f"{f' (constant: {constant})' if constant else ''}; use method='smc', 'tds' or 'dps', "
        "which take any likelihood"
    )


def detect_linear_gaussian(
    problem: Problem, site: str, method: str, fixed: Mapping[str, Tensor] | None = None
) -> tuple[LinearGaussian, str]:
    r"""Finds :math:`A`, :math:`b` and :math:`\sigma` of a model whose only observed site is
    ``Normal(A x + b, sigma)`` in the latent site ``site``.

    The model is run for :math:`x = 0` and :math:`x = e_1, \dots, e_d` as particles, which
    gives :math:`b` and the columns of :math:`A`; linearity and a constant :math:`\sigma` are
    then checked at random points. The model's other latent sites, if any, take the values
    ``fixed`` (each shaped like its site). Observed sites whose density does not depend on
    ``site`` are not counted (see :func:`observation_of`).

    Returns:
        The linear-Gaussian model and the name of the observed site.

    Raises:
        ValueError: Naming the site when the observation is not linear-Gaussian.
    """
    obs = observation_of(problem, site, method, fixed)
    shape = problem.latent_sites[site].shape
    d = int(torch.Size(shape).numel())
    eye = torch.eye(d, dtype=problem.dtype, device=problem.device)
    generator = torch.Generator(device="cpu").manual_seed(0)
    probes = torch.randn(2, d, generator=generator).to(eye)
    points = torch.cat([torch.zeros_like(eye[:1]), eye, probes])
    values = {k: v.expand(len(points), *v.shape) for k, v in (fixed or {}).items()}
    values[site] = points.reshape(-1, *shape)
    with torch.no_grad():
        trace = problem.particle_trace(len(points), values)
    fn = _normal(trace.nodes[obs])
    if fn is None:
        found = type(base_distribution(trace.nodes[obs]["fn"])).__name__
        raise ValueError(
            f"method '{method}' needs an unmasked, unscaled Normal observation, but site "
            f"'{obs}' has {found} (or a mask or scale); use method='dps' or 'tds', which take "
            "any likelihood"
        )
    n = len(points)
    loc = fn.loc.expand(fn.batch_shape).reshape(n, -1)
    scale = fn.scale.expand(fn.batch_shape).reshape(n, -1)
    b, A = loc[0], (loc[1 : d + 1] - loc[0]).T
    predicted = probes @ A.T + b
    tolerance = 1e-4 * (1 + loc.abs().max())
    if not torch.allclose(predicted, loc[d + 1 :], atol=float(tolerance), rtol=1e-4):
        raise ValueError(
            f"method '{method}' needs a linear observation, but the mean of site '{obs}' is not "
            f"linear in '{site}'; use method='dps' or 'tds'"
        )
    if not torch.allclose(scale, scale[:1].expand_as(scale)):
        raise ValueError(
            f"method '{method}' needs a noise scale of site '{obs}' that does not depend on "
            f"'{site}'; use method='dps' or 'tds'"
        )
    return LinearGaussian(A, scale[0], b), obs
