r"""Guides for stochastic variational inference: normalizing flows, amortized, semi-implicit and
implicit guides."""

__all__ = [
    "FLOWS",
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
    "build_flow",
]

from .amortized import AmortizedFlowGuide, AmortizedNormal
from .flows import FLOWS, ElementwiseAffine, FlowGuide, FlowLatent, TrilAffine, build_flow
from .implicit import (
    AmortizedImplicitGuide,
    AmortizedSemiImplicitGuide,
    ImplicitGuide,
    ImplicitLatent,
    MixingNetwork,
    SemiImplicitGuide,
    SemiImplicitLatent,
)
