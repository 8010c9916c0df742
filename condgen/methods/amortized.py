r"""Amortized conditioning (it lives in :mod:`condgen.amortized.method`; importing it registers
``"npe"``, ``"fmpe"`` and ``"npse"``)."""

__all__ = ["AmortizedMethod", "FMPEMethod", "NPEMethod", "NPSEMethod"]

from ..amortized.method import AmortizedMethod, FMPEMethod, NPEMethod, NPSEMethod
