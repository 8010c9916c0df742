r"""Seeded blocks: :func:`seeded` runs code with every random number generator seeded.

A low-level module (it imports nothing of condgen), so that any module may use it without an
import cycle; ``condgen.conditioning.seeded`` re-exports it.
"""

from __future__ import annotations

__all__ = ["seeded"]

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pyro
import torch


@contextmanager
def seeded(seed: int | None, device: torch.device | str = "cpu") -> Iterator[None]:
    r"""Runs a block with every random number generator seeded, then restores their states.

    The torch (CPU and, for a CUDA ``device``, that device), NumPy and Python generators are
    seeded with ``seed`` through :func:`pyro.set_rng_seed`, so a block gives the same draws
    for the same seed and leaves the caller's random state as it found it. With ``seed=None``
    the block runs on the global generators unchanged.
    """
    if seed is None:
        yield
        return
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
