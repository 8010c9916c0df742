r"""Guides by name, for the ``svi`` and ``importance`` methods."""

from __future__ import annotations

__all__ = ["GUIDES", "build_guide"]

from collections.abc import Callable

import pyro.infer.autoguide as autoguides

from ..guides import FlowGuide, ImplicitGuide, SemiImplicitGuide
from ..problem import Problem

GUIDES: dict[str, Callable] = {
    "normal": autoguides.AutoNormal,
    "mvn": autoguides.AutoMultivariateNormal,
    "lowrank": autoguides.AutoLowRankMultivariateNormal,
    "flow": FlowGuide,
    "semi_implicit": SemiImplicitGuide,
    "implicit": ImplicitGuide,
}


def build_guide(guide: str | Callable | None, problem: Problem) -> Callable:
    r"""Builds a guide for the problem's conditioned model from a name, or passes one through.

    Arguments:
        guide: A name in :data:`GUIDES` (``"normal"``, ``"mvn"``, ``"lowrank"``, ``"flow"``
            for a :class:`~condgen.guides.FlowGuide` with a neural spline flow,
            ``"semi_implicit"``, ``"implicit"``), a Pyro guide (any callable with the model's
            signature), or None for ``"mvn"``.
        problem: The problem whose conditioned model the guide approximates.
    """
    if guide is None:
        guide = "mvn"
    if isinstance(guide, str):
        if guide not in GUIDES:
            raise ValueError(f"unknown guide {guide!r}; guide names are {sorted(GUIDES)}")
        return GUIDES[guide](problem.conditioned_model)
    if not callable(guide):
        raise ValueError(
            f"guide must be a name in {sorted(GUIDES)} or a Pyro guide, got {guide!r}"
        )
    return guide
