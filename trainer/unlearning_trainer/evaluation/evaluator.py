"""Evaluate a model the same way before, during and after unlearning.

Every random draw (timestep grid noise, likelihood noise, generation) comes from `evaluation.seed`, so two
evaluations of the same weights give the same numbers and runs can be compared point by point.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unlearning_trainer.data.images import Images, ImageSet
from unlearning_trainer.data.sampling import InfiniteSampler, generator_for
from unlearning_trainer.errors import SpecError
from unlearning_trainer.evaluation import grids, likelihood, metrics, quality
from unlearning_trainer.evaluation.membership import MembershipAttacks
from unlearning_trainer.models.adapter import DiffusionAdapter
from unlearning_trainer.objectives.losses import NoiseDraw, draw_noise, per_sample_error
from unlearning_trainer.spec import EvaluationSpec

GRID_SAMPLES = 64


class Evaluator:
    def __init__(
        self,
        adapter: DiffusionAdapter,
        spec: EvaluationSpec,
        *,
        forget: ImageSet,
        retain: Images,
        samples_dir: Path,
        device: torch.device,
        classifier: quality.DomainClassifier | None = None,
        holdout: ImageSet | None = None,
    ) -> None:
        """`holdout` (data.holdout) turns on the membership attacks: members are the fixed retain subset."""
        if spec.nll.method == "pf-ode" and not adapter.discrete:
            raise SpecError(
                "spec.evaluation.nll.method: pf-ode assumes 8-bit pixels and a linear β schedule, which a "
                f"{adapter.kind} model does not have. Fix: use vlb."
            )
        if spec.nll.method == "pf-ode" and not likelihood.is_linear(adapter.betas):
            raise SpecError(
                "spec.evaluation.nll.method: pf-ode integrates the continuous form of a linear β schedule, and this "
                f"model's scheduler is not linear ({adapter.scheduler.config.get('beta_schedule')!r}). Fix: use vlb, "
                "which takes the model's own β schedule."
            )
        self.adapter = adapter
        self.spec = spec
        self.device = device
        self.samples_dir = samples_dir
        self.classifier = classifier
        self.forget = forget.unique()
        subset = InfiniteSampler(len(retain), spec.seed).indices(0, min(spec.retain_images, len(retain)))
        self.retain_images, self.retain_captions = retain.take(subset)
        self.forget_images, _ = self.forget.take(torch.arange(len(self.forget)))
        self.forget_pixels = (self.forget_images + 1) / 2
        self.values = self.forget_pixels[0].numel()
        self.threshold = spec.l2_threshold(self.values)
        total = len(adapter.alphas_cumprod)
        self.grid = torch.linspace(0, total - 1, spec.timestep_grid).round().long()
        self.membership = None
        self.forget_percentiles: dict[int, list[dict[str, Any]]] = {}
        """Per evaluated step: each distinct forget image's membership percentile under every attack."""
        if holdout is not None:
            self.membership = MembershipAttacks(
                adapter,
                spec.membership,
                seed=spec.seed,
                device=device,
                members=(self.retain_images, self.retain_captions),
                holdout=holdout,
                forget=self.forget,
            )

    def _grid_draws(self, images: torch.Tensor, key: int) -> NoiseDraw:
        """Fixed (t, ε) pairs: every image at every grid timestep, with noise from the evaluation seed."""
        repeated = images.repeat_interleave(len(self.grid), dim=0)
        noise = draw_noise(repeated.shape, self.adapter.alphas_cumprod, generator_for(self.spec.seed, key))
        t = self.grid.repeat(len(images))
        abar = self.adapter.alphas_cumprod[t]
        return NoiseDraw(t, noise.eps, abar.sqrt().float(), (1 - abar).sqrt().float(), noise.coin, noise.uniform).to(
            self.device
        )

    @torch.no_grad()
    def denoising_loss(
        self, unet: torch.nn.Module, images: torch.Tensor, captions: list[str] | None, key: int
    ) -> float:
        """Mean squared ε-prediction error per entry on the fixed timestep grid."""
        clean = self.adapter.to_diffusion_space(images.to(self.device))
        draws = self._grid_draws(clean, key)
        repeated_captions = None if captions is None else [c for c in captions for _ in self.grid]
        clean = clean.repeat_interleave(len(self.grid), dim=0)
        total, count = 0.0, 0
        for start in range(0, len(clean), 256):
            rows = slice(start, start + 256)
            part = draws.rows(rows.start, min(rows.stop, len(clean)))
            denoise = self.adapter.denoiser(unet, None if repeated_captions is None else repeated_captions[rows])
            m = part.noisy(clean[rows])
            errors = per_sample_error(denoise(m, part.t), m, clean[rows], part)
            total += errors.sum().item()
            count += errors.numel() * clean[0].numel()
        return total / count

    def forget_nll_bits_per_dim(self, unet: torch.nn.Module) -> float:
        """Mean NLL in bits/dim over the distinct forget images."""
        values = []
        for index in range(len(self.forget)):
            image = self.adapter.to_diffusion_space(self.forget_images[index : index + 1].to(self.device))[0]
            caption = None if self.forget.captions is None else [self.forget.captions[index]]
            denoise = self.adapter.denoiser(unet, caption)
            generator = generator_for(self.spec.seed, 2, index)
            if self.spec.nll.method == "vlb":
                nats = likelihood.vlb_nll(
                    denoise,
                    image,
                    self.adapter.alphas_cumprod,
                    self.adapter.betas,
                    terms=self.spec.nll.timesteps,
                    generator=generator,
                    discrete=self.adapter.discrete,
                )
            else:
                total = len(self.adapter.alphas_cumprod)
                nats = likelihood.pf_ode_nll(
                    denoise,
                    image,
                    self.adapter.alphas_cumprod,
                    beta_min=float(self.adapter.betas[0]) * total,
                    beta_max=float(self.adapter.betas[-1]) * total,
                    generator=generator,
                    tolerance=self.spec.nll.tolerance,
                    draws=self.spec.nll.hutchinson_samples,
                )
            values.append(metrics.bits_per_dim(nats, image.numel()).item())
        return sum(values) / len(values)

    def generate(self, unet: torch.nn.Module) -> torch.Tensor:
        """`numSamples` samples; for a text-conditioned model, split evenly over the distinct forget captions
        (the i-th caption's share drawn with seed + i), so every requested image is looked for."""
        prompts = [None] if self.forget.captions is None else list(dict.fromkeys(self.forget.captions))
        shares = [len(part) for part in np.array_split(np.arange(self.spec.num_samples), len(prompts))]
        return torch.cat(
            [
                self.adapter.generate(
                    unet,
                    share,
                    seed=self.spec.seed + index,
                    steps=self.spec.inference_steps,
                    prompt=prompt,
                    guidance_scale=self.spec.guidance_scale,
                )
                for index, (prompt, share) in enumerate(zip(prompts, shares, strict=True))
                if share
            ]
        )

    def __call__(self, unet: torch.nn.Module, step: int, *, grid_name: str | None = None) -> dict[str, float]:
        """All metrics of `unet` (unwrapped) at `step`; writes the sample grid as samples/step-NNNNNN.png (or
        samples/<grid_name>.png)."""
        started = time.perf_counter()
        was_training = unet.training
        unet.eval()
        try:
            samples = self.generate(unet)
            distances = metrics.nearest_distances(samples, self.forget_pixels)
            result = {
                "memorization_rate": metrics.memorization_rate(distances, self.threshold),
                "memorized_samples": float((distances < self.threshold).sum()),
                "min_forget_distance": distances.min().item(),
                "min_forget_rms": distances.min().item() / self.values**0.5,
                "forget_loss": self.denoising_loss(unet, self.forget_images, self.forget.captions, key=0),
                "retain_loss": self.denoising_loss(unet, self.retain_images, self.retain_captions, key=1),
                "forget_nll_bpd": self.forget_nll_bits_per_dim(unet),
            }
            if self.classifier is not None:
                hits = distances < self.threshold
                result |= quality.quality_metrics(self.classifier, samples[~hits])
                result["quality_fd_all"] = quality.frechet_to_reference(self.classifier, samples)
            if self.membership is not None:
                membership = self.membership(unet)
                result |= membership.metrics
                percentiles = membership.forget_percentiles
                if grid_name is None:
                    self.forget_percentiles[step] = [
                        {"file": name, **{attack: values[index] for attack, values in percentiles.items()}}
                        for index, name in enumerate(self.membership.forget_names)
                    ]
            grids.save_grid(samples[:GRID_SAMPLES], self.samples_dir / f"{grid_name or f'step-{step:06d}'}.png")
        finally:
            unet.train(was_training)
        result["eval_seconds"] = time.perf_counter() - started
        return result
