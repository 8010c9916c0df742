r"""Guides for stochastic variational inference: normalizing flows and amortized guides."""

__all__ = [
    "FLOWS",
    "AmortizedFlowGuide",
    "AmortizedNormal",
    "ElementwiseAffine",
    "FlowGuide",
    "FlowLatent",
    "build_flow",
]

from .amortized import AmortizedFlowGuide, AmortizedNormal
from .flows import FLOWS, ElementwiseAffine, FlowGuide, FlowLatent, build_flow
