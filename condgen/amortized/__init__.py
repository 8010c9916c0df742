r"""Amortized posterior estimators trained on a Pyro model's simulations: NPE, FMPE and NPSE.

This package holds the estimators, which know nothing of conditioning methods; the methods
that draw from them (``"npe"``, ``"fmpe"`` and ``"npse"``) are in :mod:`condgen.methods.amortized`,
and :mod:`condgen.infer` re-exports the estimators for users.
"""

__all__ = [
    "FMPE",
    "NPE",
    "NPSE",
    "PathEstimator",
    "PosteriorEstimator",
    "TruncatedPrior",
    "fit_sequential",
]

from .estimator import PosteriorEstimator
from .fmpe import FMPE
from .npe import NPE
from .npse import NPSE
from .path import PathEstimator
from .sequential import TruncatedPrior, fit_sequential
