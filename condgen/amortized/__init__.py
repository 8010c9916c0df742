r"""Amortized posterior estimators trained on a Pyro model's simulations: NPE, FMPE and NPSE.

Users import the estimators from :mod:`condgen.infer` and their methods from
:mod:`condgen.methods` (:mod:`condgen.amortized.method`, which registers ``"npe"``,
``"fmpe"`` and ``"npse"`` when :mod:`condgen.methods` is imported); this package holds them.
"""

__all__ = ["FMPE", "NPE", "NPSE", "PathEstimator", "PosteriorEstimator"]

from .estimator import PosteriorEstimator
from .fmpe import FMPE
from .npe import NPE
from .npse import NPSE
from .path import PathEstimator
