r"""Data-parallel fits: the one trainer under ``torchrun --nproc_per_node=2``.

Both ranks draw the same global minibatches and loss noise from the same seed, each takes a
contiguous half of every minibatch, and the shard-weighted gradients and losses are summed
over the ranks, so that rank 0's weights and losses must be those of one process with the
same seed, up to the rounding of the split sums. Measured (2 CPU cores, gloo): max |weight
difference| 3.0e-8 (prior, 30 steps) and 3.6e-7 (NPE, 3 epochs), max |loss difference|
1.9e-6 and 5.4e-7 on losses of order 1; the bounds, ``rtol=1e-5`` with ``atol=1e-6`` (the
weights that are near zero), leave a margin of about 3 over them. Wrong noise (every rank
taking the first half of the minibatch's noise instead of its own shard's) changes the prior's
first loss by 6.3.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _ddp_fit import FITS

SCRIPT = Path(__file__).with_name("_ddp_fit.py")


@pytest.mark.parametrize("case", sorted(FITS))
def test_two_ranks_fit_as_one_process(case: str, tmp_path: Path):
    out = tmp_path / "rank0.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node=2", str(SCRIPT), case, str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    distributed = torch.load(out)
    state, losses = FITS[case]()
    assert len(distributed["losses"]) == len(losses)
    torch.testing.assert_close(
        torch.tensor(distributed["losses"]), torch.tensor(losses), rtol=1e-5, atol=1e-6
    )
    assert distributed["state"].keys() == state.keys()
    for name, value in state.items():
        torch.testing.assert_close(distributed["state"][name], value, rtol=1e-5, atol=1e-6)
