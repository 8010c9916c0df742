r"""condgen: condition deep generative priors on data inside Pyro."""

__all__ = [
    "LinearGaussian",
    "Posterior",
    "Problem",
    "Site",
    "compare",
    "condition",
    "diagnostics",
    "evaluate",
    "guides",
    "infer",
    "methods",
    "priors",
]

__version__ = "0.1.0"

import warnings

with warnings.catch_warnings():  # ArviZ 0.23's daily banner about its 1.0 refactor: condgen
    # converts through ``from_dict``, which both major versions have, so it does not apply
    warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing", category=FutureWarning)
    import arviz  # noqa: F401

from . import diagnostics, evaluate, guides, infer, methods, priors
from .conditioning import condition
from .evaluate.compare import compare
from .likelihoods import LinearGaussian
from .posterior import Posterior
from .problem import Problem, Site
