r"""Tasks with known posteriors and metrics that measure draws against them."""

__all__ = [
    "BayesianLinearRegression",
    "BetaBinomial",
    "GaussianMixtureInverseProblem",
    "NormalNormal",
    "Report",
    "Task",
    "c2st",
    "compare",
    "energy_distance",
    "mmd",
    "posterior_metrics",
    "sliced_wasserstein",
]

from .compare import Report, compare, posterior_metrics
from .metrics import c2st, energy_distance, mmd, sliced_wasserstein
from .tasks import (
    BayesianLinearRegression,
    BetaBinomial,
    GaussianMixtureInverseProblem,
    NormalNormal,
    Task,
)
