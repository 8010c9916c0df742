r"""Argument checks shared by the public entry points: counts and observation mappings.

A low-level module (it imports nothing of condgen), so that any module may use it.
"""

from __future__ import annotations

__all__ = ["as_count", "as_data"]

import numbers
from collections.abc import Mapping
from typing import Any


def as_count(name: str, value: Any, minimum: int = 1) -> int:
    r"""A count given as a Python or NumPy integer, or as an integral float such as ``1000.0``,
    as an ``int``.

    Arguments:
        name: The argument's name, for the error message.
        value: The given value.
        minimum: The smallest value allowed.

    Raises:
        ValueError: If ``value`` is a bool, not an integral number, or below ``minimum``.

    Example:
        >>> import numpy as np
        >>> as_count("num_samples", np.int64(8)), as_count("num_samples", 8.0)
        (8, 8)
    """
    integral = isinstance(value, numbers.Integral) or (
        isinstance(value, numbers.Real) and float(value).is_integer()
    )
    if isinstance(value, bool) or not integral or int(value) < minimum:
        raise ValueError(
            f"{name} must be an integer of at least {minimum}, got {value!r} "
            f"({type(value).__name__})"
        )
    return int(value)


def as_data(data: Any) -> dict[str, Any]:
    r"""The observations as a dict from site name to value; ``None`` is no observation.

    Raises:
        ValueError: If ``data`` is not a mapping with string keys (a bare tensor, say).
    """
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ValueError(
            f"data must map observed site names to observations, e.g. data={{'y': y}}; got a "
            f"{type(data).__name__}"
        )
    keys = [key for key in data if not isinstance(key, str)]
    if keys:
        raise ValueError(f"data keys must be site names (strings), got {keys!r}")
    return dict(data)
