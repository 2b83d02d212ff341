"""How each objective turns its keep gradient G_x and forget gradient G_a into one update direction.

Every rule is a linear combination g = α·G_x + β·G_a whose coefficients depend only on norms and inner
products, so the rules here are pure functions of those numbers and the step applies g in place
(training/step.py): exact SISS then needs one parameter-sized buffer more than naive deletion, never a copy.
Norms and inner products are summed in float64 a chunk at a time, so no float64 copy of a gradient is made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

EPSILON = 1e-12
"""Below this norm the forget gradient counts as zero (e.g. λ = 0 with near-binary weights)."""
CHUNK = 1 << 22
"""Elements per float64 chunk when reducing a flat gradient (32 MiB of float64 at a time)."""


@dataclass(frozen=True)
class Combination:
    """g = keep·G_x + forget·G_a."""

    keep: float
    forget: float


def inner(a: torch.Tensor, b: torch.Tensor) -> float:
    """⟨a, b⟩ over all parameters, accumulated in float64."""
    total = 0.0
    for x, y in zip(a.split(CHUNK), b.split(CHUNK), strict=True):
        total += torch.dot(x.double(), y.double()).item()
    return total


def global_norm(gradient: torch.Tensor) -> float:
    """‖g‖₂ over all parameters, accumulated in float64."""
    return inner(gradient, gradient) ** 0.5


def forget_scale(forget_norm: float, target_norm: float) -> float:
    """c = C/‖G_a‖, or 0 for a vanishing forget gradient (the reference code's guard against inf).

    An overflowed (inf) or NaN norm gives NaN, so that the combined update is NaN and the step is refused or, under
    fp16 loss scaling, skipped; C/inf = 0 would silently drop the forget term."""
    if not math.isfinite(forget_norm):
        return math.nan
    return target_norm / forget_norm if forget_norm > EPSILON else 0.0


def norm_fixed(forget_norm: float, target_norm: float) -> Combination:
    """SISS norm fixing: g = G_x − (C/‖G_a‖)·G_a."""
    return Combination(keep=1.0, forget=-forget_scale(forget_norm, target_norm))


def erasediff(keep_dot_forget: float, forget_norm: float, eta: float) -> Combination:
    """EraseDiff: g = G_x + max(η − ⟨G_x, G_a⟩/‖G_a‖², 0)·G_a."""
    if not math.isfinite(forget_norm):
        return Combination(keep=1.0, forget=math.nan)
    squared = forget_norm**2
    if squared <= EPSILON**2:
        return Combination(keep=1.0, forget=0.0)
    return Combination(keep=1.0, forget=max(eta - keep_dot_forget / squared, 0.0))


def neggrad(scale: float) -> Combination:
    """NegGrad: g = −c·G_a (gradient ascent on the forget loss)."""
    return Combination(keep=0.0, forget=-scale)


def apply(combination: Combination, g_keep: torch.Tensor | None, g_forget: torch.Tensor | None) -> torch.Tensor:
    """Overwrite one of the buffers with g and return it: g_keep when there is one, else g_forget."""
    if g_keep is None:
        if g_forget is None:
            raise ValueError("a step needs at least one gradient")
        return g_forget.mul_(combination.forget)
    if combination.keep != 1.0:
        g_keep.mul_(combination.keep)
    if g_forget is not None and combination.forget != 0.0:
        g_keep.add_(g_forget, alpha=combination.forget)
    return g_keep
