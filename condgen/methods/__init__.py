r"""Conditioning methods, registered by name: ``condgen.methods.available()`` lists them."""

__all__ = [
    "CFG",
    "DPS",
    "NUTS",
    "SMC",
    "SVI",
    "TDS",
    "ClassifierGuidance",
    "CovarianceSMC",
    "FMPEMethod",
    "Gibbs",
    "Importance",
    "Langevin",
    "Method",
    "MomentTwistSMC",
    "NPEMethod",
    "NPSEMethod",
    "PiGDM",
    "TemperedSMC",
    "available",
    "describe",
    "get",
    "register",
]

from .amortized import FMPEMethod, NPEMethod, NPSEMethod
from .base import Method, available, describe, get, register
from .bayesian import NUTS, SVI, Importance
from .covariance_kernel import CovarianceSMC
from .gibbs import Gibbs
from .guidance import CFG, DPS, ClassifierGuidance, PiGDM
from .langevin import Langevin
from .moment_twist import MomentTwistSMC
from .smc import SMC
from .tds import TDS
from .tempered import TemperedSMC
