"""The SLCP task: its log joint against a hand computation with a full-covariance Gaussian, the
observation's layout, and sbibm's files where sbibm is installed (it is optional)."""

import importlib.util
import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from condgen.evaluate import SLCP, available_tasks, get_task

HAS_SBIBM = importlib.util.find_spec("sbibm") is not None
X = torch.tensor([2.4, 0.5, 9.9, 1.7, -10.4, -1.9, -1.2, -0.1])


def _hand_log_joint(theta: torch.Tensor, x: torch.Tensor) -> float:
    r"""The uniform prior's log-density plus the four draws' log-likelihood, in float64, from
    the covariance matrix written out (sbibm's simulator adds 1e-6 to its diagonal)."""
    theta, x = theta.double(), x.double().reshape(4, 2)
    if (theta.abs() > 3).any():
        return -math.inf
    s1, s2, rho = theta[2] ** 2, theta[3] ** 2, math.tanh(theta[4])
    cov = torch.stack(
        [
            torch.stack([s1**2 + 1e-6, rho * s1 * s2]),
            torch.stack([rho * s1 * s2, s2**2 + 1e-6]),
        ]
    )
    normal = MultivariateNormal(theta[:2], covariance_matrix=cov)
    return float(normal.log_prob(x).sum()) - 5 * math.log(6.0)


def test_log_joint_matches_hand_computation():
    task = SLCP(observation=X)
    assert task.data["x"].shape == (4, 2)
    assert torch.equal(task.data["x"][1], X[2:4])  # the 8 numbers are 4 pairs in a row
    theta = torch.tensor(
        [
            [-2.8, -0.4, 2.9, 1.2, 2.9],  # strongly correlated (rho = 0.994)
            [0.1, 0.0, -1.5, 0.8, -0.7],
            [1.0, -2.0, 0.3, -0.01, 2.5],  # s2 = 1e-4: the 1e-6 jitter matters
            [0.0, 0.0, 1.0, 1.0, 0.0],
        ]
    )
    got = task.log_joint({"theta": theta}).double()
    want = torch.tensor([_hand_log_joint(t, X) for t in theta], dtype=torch.float64)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-3), (got, want)
    # the same under more batch dimensions (the particle plate and chains on the left)
    batched = task.likelihood(theta.reshape(2, 2, 5)).log_prob(task.data["x"])
    assert batched.shape == (2, 2)
    assert torch.allclose(batched.reshape(-1).double(), want + 5 * math.log(6.0), rtol=1e-5)


def test_options_and_registry():
    assert "slcp" in available_tasks()
    task = get_task("slcp", observation=X.reshape(1, 8))
    assert not task.exact and torch.equal(task.data["x"].reshape(-1), X)
    with pytest.raises(ValueError, match="8 numbers"):
        SLCP(observation=torch.zeros(6))
    with pytest.raises(ValueError, match="1 to 10"):
        SLCP(observation=11)
    with pytest.raises(ValueError, match="sbibm's observations only"):
        task.reference_samples(10)


def test_missing_sbibm_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(ImportError, match="pip install --no-deps sbibm"):
        SLCP(observation=1)


@pytest.mark.skipif(not HAS_SBIBM, reason="sbibm is not installed")
def test_sbibm_observation_and_reference_draws():
    task = SLCP(observation=1)
    assert task.data["x"].shape == (4, 2) and task.truth.shape == (5,)
    assert task.data["x"][0].tolist() == pytest.approx([2.3718784, 0.49947417])
    draws = task.reference_samples(10_000)["theta"]
    assert draws.shape == (10_000, 5) and (draws.abs() <= 3).all()
    assert task.reference_samples(10, seed=1)["theta"].shape == (10, 5)
    # the reference draws sit where the model's likelihood is high: above the truth's, mostly
    log_joint = task.log_joint({"theta": draws[:1000]})
    assert float(log_joint.median()) > float(task.log_joint({"theta": task.truth[None]})[0]) - 5
