r"""condgen: condition deep generative priors on data inside Pyro."""

__all__ = ["Posterior", "Problem", "Site", "compare", "condition", "evaluate", "methods"]

__version__ = "0.1.0"

from . import evaluate, methods
from .conditioning import condition
from .evaluate.compare import compare
from .posterior import Posterior
from .problem import Problem, Site
