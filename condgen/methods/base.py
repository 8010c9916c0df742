r"""The method interface and the registry that maps method names to classes."""

from __future__ import annotations

__all__ = ["FAMILIES", "Method", "available", "get", "register"]

import abc
import inspect
from typing import Any, ClassVar

from .._checks import as_count
from ..posterior import Posterior
from ..problem import Problem

FAMILIES = ("bayesian", "guidance", "amortized")

_REGISTRY: dict[str, type[Method]] = {}


class Method(abc.ABC):
    r"""A way to turn a :class:`~condgen.Problem` into a :class:`~condgen.Posterior`.

    Subclasses set :attr:`name` and :attr:`family` (``"bayesian"``, ``"guidance"`` or
    ``"amortized"``), take their options as keyword arguments of ``__init__`` and implement
    :meth:`run`. A method that cannot handle a problem raises a :class:`ValueError` that names
    the offending site and suggests a method that fits.
    """

    name: ClassVar[str]
    family: ClassVar[str]

    @abc.abstractmethod
    def run(self, problem: Problem, num_samples: int, progress: bool = True) -> Posterior:
        r"""Conditions the problem.

        Arguments:
            problem: The model and its observations.
            num_samples: How many draws to return (all chains together).
            progress: Whether to show progress bars.
        """

    def options(self) -> dict[str, Any]:
        r"""The options of this method object, by name."""
        names = inspect.signature(type(self).__init__).parameters
        return {k: getattr(self, k) for k in names if k != "self" and hasattr(self, k)}

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({options})"


def register(cls: type[Method]) -> type[Method]:
    r"""Class decorator that registers a method under its :attr:`~Method.name`."""
    if cls.family not in FAMILIES:
        raise ValueError(
            f"unknown family {cls.family!r} for {cls.__name__}; use one of {FAMILIES}"
        )
    _REGISTRY[cls.name] = cls
    return cls


def _registered() -> list[type[Method]]:
    r"""The registered method classes by family (in the order of :data:`FAMILIES`), then by
    name: an order that does not depend on the order in which their modules were imported."""
    return sorted(_REGISTRY.values(), key=lambda cls: (FAMILIES.index(cls.family), cls.name))


def available() -> dict[str, str]:
    r"""The registered methods: a dict from method name to family, by family and then name.

    Example:
        >>> import condgen
        >>> families = condgen.methods.available()
        >>> families["nuts"], families["dps"], families["npe"]
        ('bayesian', 'guidance', 'amortized')
        >>> len(families) >= 12
        True
    """
    return {cls.name: cls.family for cls in _registered()}


def describe() -> dict[str, str]:
    r"""The first sentence of each registered method's docstring, by name (for listings such
    as ``condgen methods``)."""
    summaries = {}
    for cls in _registered():
        paragraph = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        sentence = paragraph.split(". ")[0].split(" :math:")[0].split(" by ")[0]
        summaries[cls.name] = sentence.rstrip(".:")
    return summaries


def get(method: str | Method, **options: Any) -> Method:
    r"""Resolves a method name (with options) or a method object into a method object.

    Raises:
        ValueError: If the name is unknown, an option is not one of the method's, or
            options are given together with a method object.
    """
    if isinstance(method, Method):
        if options:
            raise ValueError(
                f"options {sorted(options)} were given with a method object; pass them to "
                f"the object instead, e.g. {type(method).__name__}({next(iter(options))}=...)"
            )
        return method
    if not isinstance(method, str) or method not in _REGISTRY:
        raise ValueError(
            f"unknown method {method!r}; available methods are "
            + ", ".join(f"'{n}' ({f})" for n, f in available().items())
        )
    cls = _REGISTRY[method]
    parameters = {k: p for k, p in inspect.signature(cls.__init__).parameters.items()}
    parameters.pop("self")
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for method '{method}'; its options are "
            f"{list(parameters)}"
        )
    for name, value in options.items():  # counts as NumPy integers or 1000.0, as for num_samples
        default = parameters[name].default
        if isinstance(default, int) and not isinstance(default, bool) and value is not None:
            options[name] = as_count(f"option '{name}' of method '{method}'", value, minimum=0)
    return cls(**options)
