r"""Adversarial variational Bayes (it lives beside its guide, in :mod:`condgen.guides.avb`)."""

__all__ = ["AdversarialELBO"]

from ..guides.avb import AdversarialELBO
