r"""condgen: condition deep generative priors on data inside Pyro."""

__all__ = ["Posterior", "Problem", "Site", "condition", "methods"]

__version__ = "0.1.0"

from . import methods
from .conditioning import condition
from .posterior import Posterior
from .problem import Problem, Site
