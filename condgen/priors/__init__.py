r"""Neural priors as Pyro distributions: diffusion, flow matching, normalizing flows, and an
exact Gaussian-mixture test bed."""

__all__ = [
    "MLP",
    "CosineSchedule",
    "DiffusionPrior",
    "FlowMatchingPrior",
    "FlowPrior",
    "GaussianMixturePrior",
    "PathPrior",
    "Prior",
    "RectifiedSchedule",
    "Schedule",
    "UNet",
    "VESchedule",
    "VPSchedule",
    "load",
    "save_prior",
]

from .base import Prior
from .flow import FlowPrior
from .io import load, save_prior
from .mixture import GaussianMixturePrior
from .nets import MLP, UNet
from .path import DiffusionPrior, FlowMatchingPrior, PathPrior
from .schedules import CosineSchedule, RectifiedSchedule, Schedule, VESchedule, VPSchedule
