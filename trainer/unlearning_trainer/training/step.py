"""One optimizer step: gradients of the loss terms, an explicit all-reduce, combination, clip, AdamW, schedule.

Keep and forget gradients must stay apart for norm fixing, so a step takes them with `torch.autograd.grad`
under `no_sync` and all-reduces both flat buffers itself. DDP would only average the first backward of a
forward pass; the second (the forget term) would stay local and each rank would rescale a different G_a.

Single-backward option (`method.forgetNormRefreshEvery = K`): on every K-th step (and the first) the exact
two-gradient step runs and caches c = C/‖G_a‖; the steps in between take one backward pass on keep − c·forget.
Joint-loss methods (ReTrack) always take one backward pass on their weighted sum of the terms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate import Accelerator

from unlearning_trainer.errors import NonFiniteError
from unlearning_trainer.objectives.losses import Denoiser, NoiseDraw
from unlearning_trainer.objectives.methods import Objective


@dataclass(frozen=True)
class MicroBatch:
    keep: torch.Tensor
    forget: torch.Tensor
    denoise_keep: Denoiser
    denoise_forget: Denoiser
    noise: NoiseDraw
    neighbours: torch.Tensor | None = None
    """ReTrack: each forget image's k nearest retain images, (B, k, ...) in diffusion space."""


def flatten(grads: tuple[torch.Tensor | None, ...], params: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-parameter gradients (None → zeros) into one flat vector."""
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params, strict=True)]
    )


def assign(flat: torch.Tensor, params: list[torch.Tensor]) -> None:
    """Write a flat gradient vector into the parameters' .grad fields."""
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
        offset += n


class Stepper:
    """Runs optimizer steps for one objective; keeps only the cached forget scale between steps."""

    def __init__(
        self,
        objective: Objective,
        accelerator: Accelerator,
        unet: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        max_grad_norm: float,
        refresh_every: int | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    ) -> None:
        self.objective = objective
        self.accelerator = accelerator
        self.unet = unet
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.params = [p for p in unet.parameters() if p.requires_grad]
        self.max_grad_norm = max_grad_norm
        self.refresh_every = refresh_every if objective.norm_fixed else None
        self.cached_scale: float | None = None

    def single_backward(self, step: int) -> bool:
        """Whether this step takes one backward pass with the cached forget scale."""
        return self.refresh_every is not None and self.cached_scale is not None and step % self.refresh_every != 0

    def _reduce(self, flat: torch.Tensor | None) -> torch.Tensor | None:
        if flat is None or self.accelerator.num_processes == 1:
            return flat
        return self.accelerator.reduce(flat, reduction="mean")

    def _grad(self, loss: torch.Tensor, *, retain: bool) -> torch.Tensor:
        return flatten(torch.autograd.grad(loss, self.params, retain_graph=retain, allow_unused=True), self.params)

    def __call__(self, step: int, micro_batches: list[MicroBatch]) -> dict[str, float]:
        """Accumulate over `micro_batches`, update the parameters, and return the step's statistics."""
        fused = self.single_backward(step)
        share = 1.0 / len(micro_batches)
        g_keep: torch.Tensor | None = None
        g_forget: torch.Tensor | None = None
        stats: dict[str, float] = {}
        with self.accelerator.no_sync(self.unet):
            for batch in micro_batches:
                terms = self.objective.terms(
                    batch.denoise_keep, batch.denoise_forget, batch.keep, batch.forget, batch.noise, batch.neighbours
                )
                for key, value in terms.stats.items():
                    stats[key] = stats.get(key, 0.0) + share * value
                if fused or self.objective.joint:
                    loss = terms.keep - self.cached_scale * terms.forget if fused else self.objective.joint_loss(terms)
                    g = self._grad(loss, retain=False) * share
                    g_keep = g if g_keep is None else g_keep + g
                    continue
                if terms.keep is not None:
                    g = self._grad(terms.keep, retain=terms.forget is not None) * share
                    g_keep = g if g_keep is None else g_keep + g
                if terms.forget is not None:
                    g = self._grad(terms.forget, retain=False) * share
                    g_forget = g if g_forget is None else g_forget + g
        g_keep, g_forget = self._reduce(g_keep), self._reduce(g_forget)
        if fused:
            update, combine_stats = g_keep, {"forget_scale": self.cached_scale}
        elif self.objective.joint:
            update, combine_stats = g_keep, {}
        else:
            update, combine_stats = self.objective.combine(g_keep, g_forget)
            if self.refresh_every is not None:
                self.cached_scale = combine_stats["forget_scale"]
        if not bool(torch.isfinite(update).all()):
            raise NonFiniteError(
                f"step {step + 1}: the update is NaN or inf, so it was not applied; training stopped, the last "
                "checkpoint is kept and nothing is published. Fix: lower spec.training.learningRate or "
                "spec.method.forgetGradNorm, or keep spec.method.lambda strictly between 0 and 1"
            )
        assign(update, self.params)
        stats |= combine_stats
        stats["grad_norm"] = float(self.accelerator.clip_grad_norm_(self.params, self.max_grad_norm))
        stats["lr"] = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        stats["single_backward"] = float(fused)
        return stats
