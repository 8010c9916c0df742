r"""Objectives and trainers: implicit-guide objectives, and posterior estimators trained on
a model's simulations."""

__all__ = ["FMPE", "NPE", "NPSE", "SIVI_ELBO", "AdversarialELBO", "KernelSIVI"]

from ..amortized import FMPE, NPE, NPSE
from ..guides.avb import AdversarialELBO
from ..guides.sivi import SIVI_ELBO, KernelSIVI
