"""One optimizer step: gradients of the loss terms, an explicit all-reduce, combination, clip, AdamW, schedule.

Keep and forget gradients must stay apart for norm fixing, so each backward pass accumulates, under `no_sync`,
into a flat buffer of its own (the parameters' `.grad` fields are pointed at it), the step all-reduces both
buffers itself in buckets, and the combination overwrites the keep buffer in place. Exact SISS therefore holds
one parameter-sized buffer more than naive deletion and makes no flat copies. DDP would only average the first
backward of a forward pass; the second (the forget term) would stay local and each rank would rescale a
different G_a.

Single-backward option (`method.forgetNormRefreshEvery = K`): on every K-th step (and the first) the exact
two-gradient step runs and caches c = C/‖G_a‖; the steps in between take one backward pass on keep − c·forget.
Joint-loss methods (ReTrack) always take one backward pass on their weighted sum of the terms.

fp16 (a loss scaler, `accelerator.scaler`): every loss is multiplied by the scale S before its backward pass,
the rules see norms divided by S, the combination is formed in scaled space and the scaler unscales the result
once before clipping; an overflow skips the step and lowers S, as in any AMP training loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from accelerate import Accelerator

from unlearning_trainer.errors import NonFiniteError
from unlearning_trainer.objectives import gradients
from unlearning_trainer.objectives.losses import Denoiser, NoiseDraw, Terms
from unlearning_trainer.objectives.methods import Objective

BUCKET_ELEMENTS = 1 << 24
"""All-reduce granularity: 64 MiB of float32 per collective, so no rank ever holds a second full-size copy."""


@dataclass(frozen=True)
class MicroBatch:
    keep: torch.Tensor
    forget: torch.Tensor
    denoise_keep: Denoiser
    denoise_forget: Denoiser
    noise: NoiseDraw
    neighbours: torch.Tensor | None = None
    """ReTrack: each forget image's k nearest retain images, (B, k, ...) in diffusion space."""


class GradientBuffer:
    """One flat tensor whose slices are shaped like the parameters. Attached as their `.grad`, it is where the
    next backward passes accumulate in place (autograd adds into an existing `.grad`)."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        dtypes = {p.dtype for p in params}
        if len(dtypes) != 1:
            raise ValueError(f"trainable parameters must share one dtype, found {sorted(map(str, dtypes))}")
        self.flat = torch.zeros(sum(p.numel() for p in params), dtype=dtypes.pop(), device=params[0].device)
        self.views = [v.view_as(p) for v, p in zip(self.flat.split([p.numel() for p in params]), params, strict=True)]

    def attach(self, params: list[torch.Tensor]) -> None:
        for p, view in zip(params, self.views, strict=True):
            p.grad = view


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
        self.scaler: torch.amp.GradScaler | None = accelerator.scaler
        self.params = [p for p in unet.parameters() if p.requires_grad]
        self.max_grad_norm = max_grad_norm
        self.refresh_every = refresh_every if objective.norm_fixed else None
        self.cached_scale: float | None = None

    def single_backward(self, step: int) -> bool:
        """Whether this step takes one backward pass with the cached forget scale."""
        return self.refresh_every is not None and self.cached_scale is not None and step % self.refresh_every != 0

    def _losses(self, terms: Terms, fused: bool) -> list[tuple[str, torch.Tensor]]:
        """The losses to differentiate, each named for the buffer its gradient accumulates in."""
        if fused:
            return [("keep", terms.keep - self.cached_scale * terms.forget)]
        if self.objective.joint:
            return [("keep", self.objective.joint_loss(terms))]
        named = [("keep", terms.keep), ("forget", terms.forget)]
        return [(name, loss) for name, loss in named if loss is not None]

    def _all_reduce(self, buffer: GradientBuffer) -> None:
        """Average the buffer across processes in place, one bucket at a time."""
        if self.accelerator.num_processes == 1:
            return
        for bucket in buffer.flat.split(BUCKET_ELEMENTS):
            bucket.copy_(self.accelerator.reduce(bucket, reduction="mean"))

    def _unscale(self) -> None:
        """Divide the combined gradient by the loss scale; the scaler records an overflow and skips the step."""
        if self.scaler is not None:
            self.scaler.unscale_(getattr(self.optimizer, "optimizer", self.optimizer))

    def __call__(self, step: int, micro_batches: list[MicroBatch]) -> dict[str, float]:
        """Accumulate over `micro_batches`, update the parameters, and return the step's statistics."""
        fused = self.single_backward(step)
        loss_scale = 1.0 if self.scaler is None else float(self.scaler.get_scale())
        buffers: dict[str, GradientBuffer] = {}
        stats: dict[str, float] = {}
        with self.accelerator.no_sync(self.unet):
            for batch in micro_batches:
                terms = self.objective.terms(
                    batch.denoise_keep, batch.denoise_forget, batch.keep, batch.forget, batch.noise, batch.neighbours
                )
                for key, value in terms.stats.items():
                    stats[key] = stats.get(key, 0.0) + value / len(micro_batches)
                losses = self._losses(terms, fused)
                for index, (name, loss) in enumerate(losses):
                    if name not in buffers:
                        buffers[name] = GradientBuffer(self.params)
                    buffers[name].attach(self.params)
                    loss = loss / len(micro_batches)
                    if self.scaler is not None:
                        loss = self.scaler.scale(loss)
                    torch.autograd.backward(loss, inputs=self.params, retain_graph=index < len(losses) - 1)
        for buffer in buffers.values():
            self._all_reduce(buffer)
        g_keep, g_forget = (buffers[name].flat if name in buffers else None for name in ("keep", "forget"))
        if fused:
            combination, combine_stats = gradients.Combination(1.0, 0.0), {"forget_scale": self.cached_scale}
        elif self.objective.joint:
            combination, combine_stats = gradients.Combination(1.0, 0.0), {}
        else:
            combination, combine_stats = self.objective.combine(g_keep, g_forget, loss_scale=loss_scale)
            if self.refresh_every is not None:
                self.cached_scale = combine_stats["forget_scale"]
        update = gradients.apply(combination, g_keep, g_forget)
        next(buffer for buffer in buffers.values() if buffer.flat is update).attach(self.params)
        del update, g_keep, g_forget, buffers
        self._unscale()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm))
        if not math.isfinite(grad_norm) and self.scaler is None:
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteError(
                f"step {step + 1}: the update is NaN or inf, so it was not applied; training stopped, the last "
                "checkpoint is kept and nothing is published. Fix: lower spec.training.learningRate or "
                "spec.method.forgetGradNorm, or keep spec.method.lambda strictly between 0 and 1"
            )
        stats |= combine_stats
        stats["grad_norm"] = grad_norm
        stats["lr"] = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        skipped = bool(getattr(self.optimizer, "step_was_skipped", False))
        if self.scheduler is not None and not skipped:
            self.scheduler.step()
        stats["single_backward"] = float(fused)
        if self.scaler is not None:
            stats["loss_scale"] = loss_scale
            stats["step_skipped"] = float(skipped)
        return stats
