r"""Seeds: :func:`check_seed` validates one, :func:`seeded` runs code with every random number
generator seeded.

A low-level module (it imports nothing of condgen), so that any module may use it without an
import cycle; ``condgen.conditioning.seeded`` re-exports it.
"""

from __future__ import annotations

__all__ = ["MAX_SEED", "check_seed", "seeded"]

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pyro
import torch

MAX_SEED = 2**32 - 1
r"""The largest seed: :func:`pyro.set_rng_seed` seeds NumPy too, which takes 32-bit seeds."""


def check_seed(seed: Any, name: str = "seed") -> int:
    r"""Returns ``seed`` as an :class:`int`, or raises a :class:`ValueError` that names the
    argument.

    A seed is a Python or NumPy integer (not a boolean) in :math:`[0, 2^{32} - 1]`, the range
    that every generator seeded through :func:`seeded` accepts.

    Arguments:
        seed: The value to check.
        name: The name of the argument that took it, for the message (``"seed"``,
            ``"seeds[2]"``...).

    Example:
        >>> check_seed(3)
        3
        >>> check_seed("abc")
        Traceback (most recent call last):
        ...
        ValueError: seed must be an integer in [0, 2**32 - 1], got 'abc' (a str)
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(
            f"{name} must be an integer in [0, 2**32 - 1], got {seed!r} (a {type(seed).__name__})"
        )
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{name} must be an integer in [0, 2**32 - 1], got {seed}")
    return int(seed)


@contextmanager
def seeded(
    seed: int | None, device: torch.device | str = "cpu", name: str = "seed"
) -> Iterator[None]:
    r"""Runs a block with every random number generator seeded, then restores their states.

    The torch (CPU and, for a CUDA ``device``, that device), NumPy and Python generators are
    seeded with ``seed`` through :func:`pyro.set_rng_seed`, so a block gives the same draws
    for the same seed and leaves the caller's random state as it found it. With ``seed=None``
    the block runs on the global generators unchanged. A seed that is not an integer in
    :math:`[0, 2^{32} - 1]` raises a :class:`ValueError` that names the argument ``name``.
    """
    if seed is None:
        yield
        return
    seed = check_seed(seed, name)
    device = torch.device(device)
    devices = [device] if device.type == "cuda" else []
    numpy_state, python_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=devices):
        pyro.set_rng_seed(seed)
        try:
            yield
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)
