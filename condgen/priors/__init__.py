r"""Neural priors as Pyro distributions: diffusion, flow matching, normalizing flows, and an
exact Gaussian-mixture test bed."""

__all__ = [
    "CosineSchedule",
    "DiffusionPrior",
    "FlowMatchingPrior",
    "FlowPrior",
    "GaussianMixturePrior",
    "PathPrior",
    "Prior",
    "RectifiedSchedule",
    "Schedule",
    "VESchedule",
    "VPSchedule",
]

from .base import Prior
from .flow import FlowPrior
from .mixture import GaussianMixturePrior
from .path import DiffusionPrior, FlowMatchingPrior, PathPrior
from .schedules import CosineSchedule, RectifiedSchedule, Schedule, VESchedule, VPSchedule
