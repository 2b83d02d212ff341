"""The importance weights: exact identities, defensive bounds, and numerical safety."""

from __future__ import annotations

import math

import pytest
import torch

from unlearning_trainer.objectives import weights


def _random_case(seed: int, dims: int = 16, batch: int = 512):
    g = torch.Generator().manual_seed(seed)
    x, a = torch.randn(batch, dims, generator=g), torch.randn(batch, dims, generator=g)
    abar = torch.rand(batch, generator=g) * 0.98 + 0.01
    gamma, sigma = abar.sqrt(), (1 - abar).sqrt()
    m = gamma[:, None] * torch.where(torch.rand(batch, 1, generator=g) < 0.5, x, a) + sigma[:, None] * torch.randn(
        batch, dims, generator=g
    )
    return m, x, a, gamma, sigma


def test_density_ratio_matches_gaussian_log_densities():
    m, x, a, gamma, sigma = _random_case(0, dims=5, batch=64)
    q_a = torch.distributions.Normal(gamma[:, None].double() * a.double(), sigma[:, None].double())
    q_x = torch.distributions.Normal(gamma[:, None].double() * x.double(), sigma[:, None].double())
    expected = q_a.log_prob(m.double()).sum(1) - q_x.log_prob(m.double()).sum(1)
    torch.testing.assert_close(weights.log_density_ratio(m, x, a, gamma, sigma), expected)


@pytest.mark.parametrize("lam", [0.01, 0.25, 0.5, 0.75, 0.99])
def test_mixture_identity_and_defensive_bounds(lam: float):
    delta = weights.log_density_ratio(*_random_case(1))
    log_w_x, log_w_a = weights.siss_log_weights(delta, lam)
    w_x, w_a = log_w_x.exp(), log_w_a.exp()
    torch.testing.assert_close((1 - lam) * w_x + lam * w_a, torch.ones_like(w_x, dtype=torch.float64))
    assert (w_x >= 0).all() and (w_x <= 1 / (1 - lam) + 1e-9).all()
    assert (w_a >= 0).all() and (w_a <= 1 / lam + 1e-9).all()


@pytest.mark.parametrize("lam", [0.0, 1e-6, 0.5, 1 - 1e-6, 1.0])
def test_no_inf_or_nan_at_huge_log_ratios(lam: float):
    delta = torch.tensor([-1e4, -1e3, -88.0, 0.0, 88.0, 1e3, 1e4], dtype=torch.float64)
    log_w_x, log_w_a = weights.siss_log_weights(delta, lam)
    assert torch.isfinite(log_w_x).all() and torch.isfinite(log_w_a).all()
    if 0 < lam < 1:
        assert torch.isfinite(log_w_x.exp()).all() and torch.isfinite(log_w_a.exp()).all()
        torch.testing.assert_close((1 - lam) * log_w_x.exp() + lam * log_w_a.exp(), torch.ones_like(delta))


def test_near_binary_limits_at_half():
    log_w_x, log_w_a = weights.siss_log_weights(torch.tensor([-1e4, 1e4], dtype=torch.float64), 0.5)
    torch.testing.assert_close(log_w_x.exp(), torch.tensor([2.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(log_w_a.exp(), torch.tensor([0.0, 2.0], dtype=torch.float64))


def test_edge_lambdas_are_exact():
    delta = torch.tensor([-3.0, 0.0, 2.0], dtype=torch.float64)
    log_w_x, log_w_a = weights.siss_log_weights(delta, 0.0)
    torch.testing.assert_close(log_w_x, torch.zeros_like(delta))
    torch.testing.assert_close(log_w_a, delta)
    log_w_x, log_w_a = weights.siss_log_weights(delta, 1.0)
    torch.testing.assert_close(log_w_x, -delta)
    torch.testing.assert_close(log_w_a, torch.zeros_like(delta))


def test_rejects_lambda_outside_unit_interval():
    with pytest.raises(ValueError, match="lambda"):
        weights.siss_log_weights(torch.zeros(1), 1.5)


def test_weights_agree_with_the_logistic_form():
    delta = torch.linspace(-30, 30, 61, dtype=torch.float64)
    lam = 0.3
    log_w_x, log_w_a = weights.siss_log_weights(delta, lam)
    b = math.log(lam / (1 - lam))
    torch.testing.assert_close(log_w_x.exp(), torch.sigmoid(-(delta + b)) / (1 - lam))
    torch.testing.assert_close(log_w_a.exp(), torch.sigmoid(delta + b) / lam)
