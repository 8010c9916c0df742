r"""Guides for stochastic variational inference: normalizing flows, amortized, semi-implicit and
implicit guides."""

__all__ = [
    "GUIDE_FLOWS",
    "AmortizedFlowGuide",
    "AmortizedImplicitGuide",
    "AmortizedNormal",
    "AmortizedSemiImplicitGuide",
    "ElementwiseAffine",
    "FlowGuide",
    "FlowLatent",
    "ImplicitGuide",
    "ImplicitLatent",
    "MixingNetwork",
    "SemiImplicitGuide",
    "SemiImplicitLatent",
    "TrilAffine",
    "build_guide_flow",
]

from .affine import ElementwiseAffine, TrilAffine
from .amortized import AmortizedFlowGuide, AmortizedNormal
from .flows import GUIDE_FLOWS, FlowGuide, FlowLatent, build_guide_flow
from .implicit import AmortizedImplicitGuide, ImplicitGuide
from .latents import ImplicitLatent, MixingNetwork, SemiImplicitLatent
from .semi_implicit import AmortizedSemiImplicitGuide, SemiImplicitGuide
