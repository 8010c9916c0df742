"""Shared test settings."""

import os

import matplotlib
import torch

matplotlib.use("Agg")

# pytest-xdist runs one worker per core: one torch thread each avoids oversubscription, which
# otherwise slows small-tensor code (Pyro's SVI and NUTS) several-fold.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
