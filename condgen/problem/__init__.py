r"""What condgen learns about a Pyro model by tracing it: its sites, a vectorised likelihood
and joint density, the unconstrained view of its latents and the per-particle log-densities.
Every method sees the model through :class:`Problem`."""

from .core import Problem
from .sites import Site, base_distribution, is_neural
from .unconstrained import UnconstrainedSites

__all__ = ["Problem", "Site", "UnconstrainedSites", "base_distribution", "is_neural"]
