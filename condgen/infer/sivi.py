r"""Semi-implicit variational objectives (they live beside their guide, in
:mod:`condgen.guides.sivi`)."""

__all__ = ["SIVI_ELBO", "KernelSIVI"]

from ..guides.sivi import SIVI_ELBO, KernelSIVI
