r"""Tasks with known posteriors and metrics that measure draws against them."""

__all__ = [
    "METRICS",
    "BayesianLinearRegression",
    "BetaBinomial",
    "Calibration",
    "GaussianMixtureInverseProblem",
    "NormalNormal",
    "Report",
    "Task",
    "c2st",
    "calibration",
    "compare",
    "energy_distance",
    "map_jobs",
    "mmd",
    "moment_errors",
    "posterior_metrics",
    "sliced_wasserstein",
]

from .calibration import Calibration, calibration
from .compare import METRICS, Report, compare, posterior_metrics
from .metrics import c2st, energy_distance, mmd, moment_errors, sliced_wasserstein
from .parallel import map_jobs
from .tasks import (
    BayesianLinearRegression,
    BetaBinomial,
    GaussianMixtureInverseProblem,
    NormalNormal,
    Task,
)
