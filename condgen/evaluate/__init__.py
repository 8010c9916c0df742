r"""Tasks with known posteriors and metrics that measure draws against them."""

__all__ = [
    "BayesianLinearRegression",
    "BetaBinomial",
    "GaussianMixtureInverseProblem",
    "NormalNormal",
    "Report",
    "Task",
    "compare",
    "posterior_metrics",
    "sliced_wasserstein",
]

from .compare import Report, compare, posterior_metrics
from .metrics import sliced_wasserstein
from .tasks import (
    BayesianLinearRegression,
    BetaBinomial,
    GaussianMixtureInverseProblem,
    NormalNormal,
    Task,
)
