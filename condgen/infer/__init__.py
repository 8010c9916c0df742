r"""Objectives and trainers: amortized posterior estimators trained on a model's simulations."""

__all__ = ["NPE"]

from .npe import NPE
