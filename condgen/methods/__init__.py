r"""Conditioning methods, registered by name: ``condgen.methods.available()`` lists them."""

__all__ = ["NUTS", "SVI", "Importance", "Method", "available", "get", "register"]

from .base import Method, available, get, register
from .bayesian import NUTS, SVI, Importance
