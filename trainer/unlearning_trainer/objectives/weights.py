"""SISS importance weights for the defensive mixture q_λ(m|x,a) = (1−λ) q(m|x) + λ q(m|a), in log space.

Raw exp(Δ) overflows once |Δ| exceeds ~88 in fp32, and |Δ| reaches 10^2-10^4 at small and mid timesteps, so
everything here is computed in float64 with logaddexp. Pure functions, no side effects.
"""

from __future__ import annotations

import math

import torch


def log_density_ratio(
    m: torch.Tensor, x: torch.Tensor, a: torch.Tensor, gamma: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """Δ(m) = log q(m|a) − log q(m|x) = (‖m − γx‖² − ‖m − γa‖²) / (2σ²), summed over all entries; shape (B,)."""
    g = gamma.double().view(-1, *([1] * (m.dim() - 1)))
    m, x, a = m.double(), x.double(), a.double()
    d_x = (m - g * x).flatten(1).pow(2).sum(1)
    d_a = (m - g * a).flatten(1).pow(2).sum(1)
    return (d_x - d_a) / (2 * sigma.double() ** 2)


def siss_log_weights(delta: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """log w_x = −logsumexp(log(1−λ), log λ + Δ); log w_a = Δ + log w_x. Exact limits at λ ∈ {0, 1}."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must lie in [0, 1], got {lam}")
    delta = delta.double()
    if lam == 0.0:
        return torch.zeros_like(delta), delta
    if lam == 1.0:
        return -delta, torch.zeros_like(delta)
    lse = torch.logaddexp(torch.full_like(delta, math.log1p(-lam)), math.log(lam) + delta)
    return -lse, delta - lse


def weight_stats(log_w: torch.Tensor, prefix: str) -> dict[str, float]:
    """Mean, min, max and std of exp(log_w), for logging."""
    w = log_w.exp()
    return {
        f"{prefix}_mean": w.mean().item(),
        f"{prefix}_min": w.min().item(),
        f"{prefix}_max": w.max().item(),
        f"{prefix}_std": w.std(unbiased=False).item(),
    }
