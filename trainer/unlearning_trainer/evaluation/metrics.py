"""Pure metric functions over tensors of images in [0, 1] pixel space."""

from __future__ import annotations

import math

import torch


def nearest_distances(samples: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """d_i = min_j ‖s_i − r_j‖₂ over all entries, for samples and references in [0, 1]; shape (N,)."""
    return torch.cdist(samples.flatten(1).double(), references.flatten(1).double()).min(dim=1).values


def memorization_rate(distances: torch.Tensor, threshold: float) -> float:
    """Share of samples with nearest-forget distance below the threshold: mean(d_i < τ)."""
    return (distances < threshold).double().mean().item()


def bits_per_dim(nll_nats: torch.Tensor, dims: int) -> torch.Tensor:
    """bpd = NLL / (D ln 2)."""
    return nll_nats / (dims * math.log(2.0))


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(μ₁, e^{v₁}) ‖ N(μ₂, e^{v₂})) = ½(v₂ − v₁ + (e^{v₁} + (μ₁ − μ₂)²)/e^{v₂} − 1), per entry."""
    return 0.5 * (logvar2 - logvar1 + (logvar1.exp() + (mean1 - mean2).pow(2)) * (-logvar2).exp() - 1.0)


def _standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log N(x; μ, σ²) = −½ log 2π − log σ − (x − μ)² / 2σ², with σ = e^{log_scale} (continuous data)."""
    return -0.5 * math.log(2 * math.pi) - log_scale - 0.5 * ((x - mean) * (-log_scale).exp()) ** 2


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) for 8-bit data in [−1, 1] under N(mean, e^{2·log_scale}) integrated over the bin of width 2/255."""
    centered = x - mean
    inv_std = (-log_scale).exp()
    cdf_plus = _standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_minus = _standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    tiny = 1e-12
    log_cdf_plus = cdf_plus.clamp(min=tiny).log()
    log_one_minus_cdf_minus = (1.0 - cdf_minus).clamp(min=tiny).log()
    log_bin = (cdf_plus - cdf_minus).clamp(min=tiny).log()
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_minus, log_bin))
