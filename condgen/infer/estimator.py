r"""The shared base of the amortized estimators (it lives in :mod:`condgen.amortized`)."""

__all__ = ["PosteriorEstimator"]

from ..amortized.estimator import PosteriorEstimator
