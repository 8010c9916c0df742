"""Doctest settings: ``pytest --doctest-modules condgen`` runs every ``>>>`` example.

Each example starts from the same seeds, an empty Pyro parameter store and one torch thread,
in a fresh temporary directory (examples that save files leave the repository clean), and
its matplotlib figures are closed afterwards; ``$CONDGEN_CACHE`` points into that directory.
"""

import os
import random

import matplotlib
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import condgen

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _doctest_setup(request):
    if not isinstance(request.node, pytest.DoctestItem):  # the test suite is left alone
        yield
        return
    doctest_namespace = request.getfixturevalue("doctest_namespace")
    tmp_path = request.getfixturevalue("tmp_path")
    monkeypatch = request.getfixturevalue("monkeypatch")
    doctest_namespace.update(torch=torch, pyro=pyro, dist=dist, condgen=condgen)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONDGEN_CACHE", os.fspath(tmp_path / "cache"))  # never the real cache
    try:
        yield
    finally:
        import matplotlib.pyplot as plt

        plt.close("all")
        pyro.clear_param_store()
        torch.set_num_threads(threads)
