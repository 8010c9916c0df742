r"""Objectives and trainers: amortized posterior estimators trained on a model's simulations."""

__all__ = ["FMPE", "NPE", "NPSE"]

from .npe import NPE
from .vector_field import FMPE, NPSE
