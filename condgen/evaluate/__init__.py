r"""Tasks with known posteriors and metrics that measure draws against them."""

__all__ = [
    "METRICS",
    "SLCP",
    "Banana",
    "BayesianLinearRegression",
    "BetaBinomial",
    "Calibration",
    "DigitsDenoising",
    "DigitsInpainting",
    "Funnel",
    "GaussianLinear",
    "GaussianMixtureInverseProblem",
    "NormalNormal",
    "Report",
    "TargetDensity",
    "Task",
    "TwoModes",
    "TwoMoons",
    "TwoMoonsLikelihood",
    "UnknownNoiseMixture",
    "available_tasks",
    "c2st",
    "calibration",
    "compare",
    "digits_data",
    "digits_prior",
    "energy_distance",
    "get_task",
    "grid_draws",
    "inverse_cdf_draws",
    "map_jobs",
    "mmd",
    "moment_errors",
    "posterior_metrics",
    "prepare_digits",
    "register_task",
    "sliced_wasserstein",
]

from .calibration import Calibration, calibration
from .compare import METRICS, Report, compare, posterior_metrics
from .digits import DigitsDenoising, DigitsInpainting, digits_data, digits_prior, prepare_digits
from .metrics import c2st, energy_distance, mmd, moment_errors, sliced_wasserstein
from .mixed import UnknownNoiseMixture
from .parallel import map_jobs
from .tasks import (
    SLCP,
    BayesianLinearRegression,
    BetaBinomial,
    GaussianLinear,
    GaussianMixtureInverseProblem,
    NormalNormal,
    Task,
    TwoMoons,
    TwoMoonsLikelihood,
    available_tasks,
    get_task,
    register_task,
)
from .toys import Banana, Funnel, TargetDensity, TwoModes, grid_draws, inverse_cdf_draws
