"""How each objective turns its keep gradient G_x and forget gradient G_a into one update direction.

Gradients are flat 1-D tensors over all trainable parameters. Pure functions, no side effects.
"""

from __future__ import annotations

import torch

EPSILON = 1e-12
"""Below this norm the forget gradient counts as zero (e.g. λ = 0 with near-binary weights)."""


def global_norm(gradient: torch.Tensor) -> float:
    """‖g‖₂ over all parameters."""
    return torch.linalg.vector_norm(gradient.double()).item()


def norm_fixed(g_keep: torch.Tensor, g_forget: torch.Tensor, forget_norm: float) -> tuple[torch.Tensor, float]:
    """SISS norm fixing: g = G_x − (C/‖G_a‖)·G_a; the factor is 0 when ‖G_a‖ is 0. Returns (g, factor)."""
    factor = forget_scale(g_forget, forget_norm)
    return g_keep - factor * g_forget, factor


def forget_scale(g_forget: torch.Tensor, forget_norm: float) -> float:
    """c = C/‖G_a‖, or 0 for a vanishing forget gradient (the reference code's guard against inf)."""
    norm = global_norm(g_forget)
    return forget_norm / norm if norm > EPSILON else 0.0


def erasediff(g_keep: torch.Tensor, g_forget: torch.Tensor, eta: float) -> tuple[torch.Tensor, float]:
    """EraseDiff: g = G_x + max(η − ⟨G_x, G_a⟩/‖G_a‖², 0)·G_a. Returns (g, coefficient)."""
    squared = torch.dot(g_forget.double(), g_forget.double()).item()
    if squared <= EPSILON**2:
        return g_keep.clone(), 0.0
    coefficient = max(eta - torch.dot(g_keep.double(), g_forget.double()).item() / squared, 0.0)
    return g_keep + coefficient * g_forget, coefficient


def neggrad(g_forget: torch.Tensor, scale: float) -> torch.Tensor:
    """NegGrad: g = −c·∇L_A (gradient ascent on the forget loss)."""
    return -scale * g_forget
