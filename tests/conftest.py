"""Shared test settings."""

import os

import matplotlib
import torch

matplotlib.use("Agg")

# pytest-xdist runs one worker per core: one torch thread each avoids oversubscription, which
# otherwise slows small-tensor code (Pyro's SVI and NUTS) several-fold.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    """Starts the longest tests first (the tutorials, then those marked slow), so that on the
    xdist workers the short tests fill in beside them instead of one long test running alone
    at the end."""
    items.sort(
        key=lambda item: ("test_tutorials.py" not in item.nodeid, "slow" not in item.keywords)
    )
