"""Two-sample metrics against closed forms: energy distance, MMD, C2ST."""

import math

import pytest
import torch

from condgen.evaluate.metrics import c2st, energy_distance, mmd


def _mean_abs_normal(m: float, s: float) -> float:
    """E|Z| for Z ~ N(m, s^2)."""
    phi = 0.5 * (1 + math.erf(-m / (s * math.sqrt(2))))
    return s * math.sqrt(2 / math.pi) * math.exp(-(m**2) / (2 * s**2)) + m * (1 - 2 * phi)


def test_energy_distance_of_shifted_normals():
    """In 1-D, E = 2 E|X - Y| - E|X - X'| - E|Y - Y'| with X - Y ~ N(-m, 2) in closed form."""
    torch.manual_seed(0)
    n, m = 4000, 1.5
    x, y = torch.randn(n), torch.randn(n) + m
    exact = 2 * _mean_abs_normal(m, math.sqrt(2)) - 2 * _mean_abs_normal(0.0, math.sqrt(2))
    # U-statistic standard error is O(1/sqrt(n)) with a constant below 2 here
    assert energy_distance(x, y) == pytest.approx(exact, abs=4 * 2 / math.sqrt(n))
    assert abs(energy_distance(x, torch.randn(n))) < 4 * 2 / math.sqrt(n)


def test_mmd_of_shifted_gaussians():
    """With bandwidth h, MMD^2 between N(0, I) and N(m, I) in d dimensions is
    2 (h^2 / (h^2 + 2))^(d/2) (1 - exp(-|m|^2 / (2 (h^2 + 2))))."""
    torch.manual_seed(1)
    n, d, h = 3000, 3, 1.5
    m = torch.tensor([1.0, 0.0, -0.5])
    x, y = torch.randn(n, d), torch.randn(n, d) + m
    c = (h**2 / (h**2 + 2)) ** (d / 2)
    exact = 2 * c * (1 - math.exp(-float(m.norm() ** 2) / (2 * (h**2 + 2))))
    assert mmd(x, y, bandwidth=h) == pytest.approx(exact, abs=4 * 2 / math.sqrt(n))
    assert abs(mmd(x, torch.randn(n, d), bandwidth=h)) < 4 * 2 / math.sqrt(n)
    assert mmd(x, y) > 0  # median heuristic
    with pytest.raises(ValueError, match="dimensions"):
        mmd(x, torch.randn(n, d + 1))


def test_c2st_is_chance_for_equal_and_one_for_disjoint_distributions():
    """Equal distributions: accuracy within 4 binomial standard errors of 0.5. Disjoint
    supports: accuracy above 0.99."""
    torch.manual_seed(2)
    n = 1000
    x = torch.randn(n, 2)
    same = c2st(x, torch.randn(n, 2), epochs=100)
    assert abs(same - 0.5) < 4 * 0.5 / math.sqrt(2 * n)
    disjoint = c2st(x, torch.randn(n, 2) + 10.0, epochs=100)
    assert disjoint > 0.99
