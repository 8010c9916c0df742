"""The contract every guide of ``condgen.methods.guide_names.GUIDES`` keeps under
``condition(..., method="svi", guide=name)``: draws of every latent site with its shape, finite
and in its support, the same draws for the same seed and others for another, an ArviZ export
with the log_likelihood group, and a clear error for an unknown guide. The amortized guides,
which need a data plate, are tested in tests/test_guides.py and tests/test_implicit_guides.py.

Accuracy is tested against exact posteriors elsewhere (tests/test_guides.py,
tests/test_pyro_autoguide_suite.py)."""

import pyro
import pyro.distributions as dist
import pytest
import torch

import condgen
from condgen.methods.guide_names import GUIDES

NUM_SAMPLES = 16


def model():
    scale = pyro.sample("scale", dist.LogNormal(0.0, 0.5))
    with pyro.plate("p", 2):
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(loc, scale))


DATA = {"y": torch.tensor([0.3, -0.2])}


def _run(guide, seed=0):
    return condgen.condition(
        model, DATA, method="svi", guide=guide, num_steps=20, num_samples=NUM_SAMPLES,
        seed=seed, progress=False,
    )  # fmt: skip


@pytest.mark.parametrize("guide", sorted(GUIDES))
def test_draws_seeds_and_arviz(guide):
    a, b, c = (_run(guide, seed=s) for s in (0, 0, 1))
    assert a.samples["scale"].shape[2:] == () and a.samples["loc"].shape[2:] == (2,)
    assert a.samples["loc"].shape[0] * a.samples["loc"].shape[1] >= NUM_SAMPLES
    assert bool((a.samples["scale"] > 0).all())
    assert all(bool(torch.isfinite(v).all()) for v in a.samples.values())
    assert all(torch.equal(a.samples[n], b.samples[n]) for n in a.samples)
    assert any(not torch.equal(a.samples[n], c.samples[n]) for n in a.samples)
    idata = a.to_arviz()
    assert {"posterior", "log_likelihood", "observed_data"} <= set(idata.groups())
    assert idata.log_likelihood["y"].shape[:2] == a.samples["loc"].shape[:2]


def test_an_unknown_guide_is_named():
    with pytest.raises(ValueError, match=r"'normall'.*guide names"):
        _run("normall")
