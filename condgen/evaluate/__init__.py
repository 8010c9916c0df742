r"""Tasks with known posteriors and metrics that measure draws against them."""

__all__ = [
    "BayesianLinearRegression",
    "BetaBinomial",
    "NormalNormal",
    "Task",
    "sliced_wasserstein",
]

from .metrics import sliced_wasserstein
from .tasks import BayesianLinearRegression, BetaBinomial, NormalNormal, Task
