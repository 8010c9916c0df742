r"""Objectives and trainers: implicit-guide objectives, and posterior estimators trained on
a model's simulations."""

__all__ = ["FMPE", "NPE", "NPSE", "SIVI_ELBO", "AdversarialELBO", "KernelSIVI"]

from .avb import AdversarialELBO
from .npe import NPE
from .sivi import SIVI_ELBO, KernelSIVI
from .vector_field import FMPE, NPSE
