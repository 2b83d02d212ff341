"""The relearning probe: can plain fine-tuning on retain data bring the forgotten images back?

Fine-tuning attacks on unlearned diffusion models (DiMRA, arXiv 2512.03564) recover forgotten data with ordinary
fine-tuning that never sees a forget image. The probe runs that attack on a copy of the unlearned U-Net: AdamW
steps of the plain denoising loss on retain batches (the job's batch size, learning rate, clipping and seed),
then the audit's evaluation again. The published model is not touched.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from unlearning_trainer.data.images import Images
from unlearning_trainer.data.sampling import InfiniteSampler, generator_for
from unlearning_trainer.evaluation.evaluator import Evaluator
from unlearning_trainer.objectives import losses
from unlearning_trainer.spec import UnlearningJobSpec

PROBE_STREAM = 11
"""Keeps the probe's batches and noise apart from training's (seed, step) streams."""


def relearning_probe(
    spec: UnlearningJobSpec,
    adapter: Any,
    unet: torch.nn.Module,
    retain: Images,
    evaluator: Evaluator,
    *,
    device: torch.device,
) -> dict[str, float]:
    """Metrics of the unlearned U-Net after `spec.audit.relearningSteps` steps of fine-tuning on retain data."""
    training, steps = spec.training, spec.audit.relearning_steps
    probe = copy.deepcopy(unet).train()
    optimizer = torch.optim.AdamW(probe.parameters(), lr=training.learning_rate, weight_decay=training.weight_decay)
    sampler = InfiniteSampler(len(retain), training.seed + PROBE_STREAM)
    for step in range(steps):
        images, captions = retain.take(sampler.micro_batch(step, training.batch_size))
        clean = adapter.to_diffusion_space(images.to(device))
        noise = losses.draw_noise(clean.shape, adapter.alphas_cumprod, generator_for(training.seed, PROBE_STREAM, step))
        loss = losses.naive_deletion(adapter.denoiser(probe, captions), clean, noise.to(device)).keep
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(probe.parameters(), training.max_grad_norm)
        optimizer.step()
    probe.eval()
    return {"steps": float(steps), **evaluator(probe, steps, grid_name="relearning-probe")}
