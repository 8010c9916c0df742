r"""condgen: condition deep generative priors on data inside Pyro."""

__all__ = [
    "LinearGaussian",
    "Posterior",
    "Problem",
    "Site",
    "compare",
    "condition",
    "evaluate",
    "guides",
    "infer",
    "methods",
    "priors",
]

__version__ = "0.1.0"

from . import evaluate, guides, infer, methods, priors
from .conditioning import condition
from .evaluate.compare import compare
from .likelihoods import LinearGaussian
from .posterior import Posterior
from .problem import Problem, Site
