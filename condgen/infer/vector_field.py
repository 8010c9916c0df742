r"""Flow-matching and score-based posterior estimation (they live in :mod:`condgen.amortized`)."""

__all__ = ["FMPE", "NPSE", "PathEstimator"]

from ..amortized.fmpe import FMPE
from ..amortized.npse import NPSE
from ..amortized.path import PathEstimator
