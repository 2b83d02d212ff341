"""Adapter for pixel-space DDPMs: a diffusers `UNet2DModel` with a DDPM or DDIM scheduler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

from unlearning_trainer.models.adapter import sample_in_chunks, spatial_size
from unlearning_trainer.models.prediction import prediction_type, to_epsilon
from unlearning_trainer.objectives.losses import Denoiser

GENERATION_BATCH = 256


class PixelAdapter:
    kind = "pixel"
    discrete = True

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler) -> None:
        self.unet = unet
        self.scheduler = scheduler
        self.alphas_cumprod = scheduler.alphas_cumprod.double()
        self.betas = scheduler.betas.double()
        self.prediction = prediction_type(scheduler.config)
        height, width = spatial_size(unet.config.sample_size)
        self.image_shape = (unet.config.in_channels, height, width)

    def to(self, device: torch.device) -> None:
        self.unet.to(device)

    def to_diffusion_space(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def denoiser(self, unet: torch.nn.Module, captions: list[str] | None) -> Denoiser:
        """ε_θ(x_t, t), converted from the model's parameterisation (models/prediction.py)."""

        def denoise(m: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return to_epsilon(unet(m, t.to(m.device)).sample, m, t, self.alphas_cumprod, self.prediction)

        return denoise

    @torch.no_grad()
    def generate(
        self,
        unet: torch.nn.Module,
        count: int,
        *,
        seed: int,
        steps: int,
        prompt: str | None = None,
        guidance_scale: float = 7.5,
    ) -> torch.Tensor:
        pipeline = DDIMPipeline(unet=unet, scheduler=DDIMScheduler.from_config(self.scheduler.config))
        pipeline.set_progress_bar_config(disable=True)
        generator = torch.Generator().manual_seed(seed)

        def draw(size: int) -> np.ndarray:
            return pipeline(batch_size=size, generator=generator, num_inference_steps=steps, output_type="np").images

        return sample_in_chunks(count, GENERATION_BATCH, draw)

    def save(self, unet: torch.nn.Module, path: Path) -> None:
        DDPMPipeline(unet=unet, scheduler=self.scheduler).save_pretrained(path, safe_serialization=True)
