"""Bind a `spec.method` to its loss terms and its gradient combination rule.

| method      | terms                      | forward passes | combination                               |
|-------------|----------------------------|----------------|-------------------------------------------|
| naive       | keep                       | 1              | g = G_x                                   |
| neggrad     | forget                     | 1              | g = −c·G_a                                |
| erasediff   | keep, forget (uniform u)   | 2              | g = G_x + max(η − ⟨G_x,G_a⟩/‖G_a‖², 0)·G_a |
| siss-no-is  | keep, forget               | 2              | g = G_x − (C/‖G_a‖)·G_a                   |
| siss        | keep, forget (one input)   | 1              | g = G_x − (C/‖G_a‖)·G_a                   |
| retrack     | keep, forget (redirected)  | 2              | one backward of (1−λ)·L_keep + λ·L_forget  |
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unlearning_trainer.objectives import gradients, losses
from unlearning_trainer.spec import NORM_FIXED_METHODS, MethodSpec

FORWARD_PASSES = {"naive": 1, "neggrad": 1, "erasediff": 2, "siss-no-is": 2, "siss": 1, "retrack": 2}
JOINT_LOSS_METHODS = ("retrack",)
"""Methods whose terms are summed into one loss before a single backward pass."""


@dataclass(frozen=True)
class Objective:
    spec: MethodSpec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def norm_fixed(self) -> bool:
        return self.spec.name in NORM_FIXED_METHODS

    @property
    def joint(self) -> bool:
        return self.spec.name in JOINT_LOSS_METHODS

    @property
    def neighbour_count(self) -> int | None:
        """k when each forget image needs its k nearest retain images (ReTrack), else None."""
        return self.spec.k if self.spec.name == "retrack" else None

    def joint_loss(self, terms: losses.Terms) -> torch.Tensor:
        """ReTrack: λ·L_forget + (1−λ)·L_keep."""
        lam = self.spec.lambda_
        return lam * terms.forget + (1 - lam) * terms.keep

    def terms(
        self,
        denoise_keep: losses.Denoiser,
        denoise_forget: losses.Denoiser,
        keep: torch.Tensor,
        forget: torch.Tensor,
        noise: losses.NoiseDraw,
        neighbours: torch.Tensor | None = None,
    ) -> losses.Terms:
        """The loss terms of one micro-batch; `neighbours` (B, k, ...) are the forget images' nearest retain
        images, which only ReTrack uses."""
        name = self.spec.name
        if name == "naive":
            return losses.naive_deletion(denoise_keep, keep, noise)
        if name == "neggrad":
            return losses.neggrad(denoise_forget, forget, noise)
        if name == "erasediff":
            return losses.erasediff(denoise_keep, denoise_forget, keep, forget, noise)
        if name == "siss-no-is":
            return losses.siss_no_is(denoise_keep, denoise_forget, keep, forget, noise)
        if name == "retrack":
            if neighbours is None:
                raise ValueError("retrack needs the forget images' nearest retain images")
            return losses.retrack(denoise_keep, denoise_forget, keep, forget, neighbours, noise)
        return losses.siss(denoise_keep, keep, forget, noise, self.spec.lambda_)

    def combine(
        self, g_keep: torch.Tensor | None, g_forget: torch.Tensor | None, *, loss_scale: float = 1.0
    ) -> tuple[gradients.Combination, dict[str, float]]:
        """The coefficients of the update g = α·G_x + β·G_a from the (all-reduced) gradients, plus what to log.

        The gradients may carry a loss scale S (fp16): norms are divided by S before they enter a rule, so the
        coefficients are those of the unscaled gradients and α·(S·G_x) + β·(S·G_a) = S·g unscales exactly."""
        name = self.spec.name
        stats: dict[str, float] = {}
        if g_keep is not None:
            stats["grad_norm_keep"] = gradients.global_norm(g_keep) / loss_scale
        if g_forget is not None:
            stats["grad_norm_forget"] = gradients.global_norm(g_forget) / loss_scale
        if name == "naive":
            return gradients.Combination(keep=1.0, forget=0.0), stats
        if name == "neggrad":
            return gradients.neggrad(self.spec.neg_grad_scale), stats
        if name == "erasediff":
            dot = gradients.inner(g_keep, g_forget) / loss_scale**2
            combination = gradients.erasediff(dot, stats["grad_norm_forget"], self.spec.eta)
            return combination, stats | {"erasediff_coefficient": combination.forget}
        combination = gradients.norm_fixed(stats["grad_norm_forget"], self.spec.forget_grad_norm)
        return combination, stats | {"forget_scale": -combination.forget}
