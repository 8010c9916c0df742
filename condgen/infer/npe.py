r"""Neural posterior estimation (it lives in :mod:`condgen.amortized.npe`)."""

__all__ = ["FLOW_DEFAULTS", "NPE"]

from ..amortized.npe import FLOW_DEFAULTS, NPE
