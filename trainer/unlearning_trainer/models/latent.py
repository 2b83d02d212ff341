"""Adapter for latent, text-conditioned models: a diffusers `StableDiffusionPipeline`.

Only the U-Net trains. The VAE and the text encoder are frozen and run without gradients: images enter the
diffusion space as the mean of the VAE posterior times the VAE's scaling factor (the mean, not a sample, so
the same image always maps to the same latent on every rank), and captions become CLIP hidden states that
condition the U-Net through cross-attention. The forget-set likelihood is therefore that of the latents (a
continuous density, comparable before and after unlearning on the same VAE, not to pixel-space bits/dim).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionPipeline

from unlearning_trainer.models.adapter import sample_in_chunks, spatial_size
from unlearning_trainer.models.prediction import prediction_type, to_epsilon
from unlearning_trainer.objectives.losses import Denoiser

GENERATION_BATCH = 64


class LatentAdapter:
    kind = "latent"
    discrete = False

    def __init__(self, pipeline: StableDiffusionPipeline) -> None:
        self.pipeline = pipeline
        self.unet = pipeline.unet
        self.vae = pipeline.vae.requires_grad_(False).eval()
        self.text_encoder = pipeline.text_encoder.requires_grad_(False).eval()
        self.tokenizer = pipeline.tokenizer
        self.scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
        self.alphas_cumprod = self.scheduler.alphas_cumprod.double()
        self.betas = self.scheduler.betas.double()
        self.prediction = prediction_type(self.scheduler.config)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.latent_size = spatial_size(self.unet.config.sample_size)
        scale = pipeline.vae_scale_factor
        height, width = self.latent_size
        self.image_shape = (int(self.vae.config.in_channels), height * scale, width * scale)
        self._embeddings: dict[str, torch.Tensor] = {}

    def to(self, device: torch.device) -> None:
        for module in (self.unet, self.vae, self.text_encoder):
            module.to(device)
        self._embeddings.clear()

    @torch.no_grad()
    def to_diffusion_space(self, images: torch.Tensor) -> torch.Tensor:
        """z = s · E[q(z | x)] for images x in [−1, 1]."""
        posterior = self.vae.encode(images.to(self.vae.device, self.vae.dtype)).latent_dist
        return posterior.mean * self.scaling_factor

    @torch.no_grad()
    def _embed(self, captions: list[str]) -> torch.Tensor:
        """CLIP hidden states of each caption, cached per distinct caption (the encoder is frozen)."""
        missing = sorted({caption for caption in captions if caption not in self._embeddings})
        if missing:
            tokens = self.tokenizer(
                missing,
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            )
            hidden = self.text_encoder(tokens.input_ids.to(self.text_encoder.device))[0]
            self._embeddings.update(zip(missing, hidden, strict=True))
        return torch.stack([self._embeddings[caption] for caption in captions])

    def denoiser(self, unet: torch.nn.Module, captions: list[str] | None) -> Denoiser:
        """ε_θ(z_t, t, c), converted from the model's parameterisation; no captions means the empty prompt."""
        embeddings = self._embed(captions if captions else [""])

        def denoise(m: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            states = embeddings
            if len(states) == 1 and len(m) > 1:
                states = states.expand(len(m), *states.shape[1:])
            if len(states) != len(m):
                raise ValueError(f"{len(states)} captions for a batch of {len(m)}")
            output = unet(m, t.to(m.device), encoder_hidden_states=states.to(m.dtype)).sample
            return to_epsilon(output, m, t, self.alphas_cumprod, self.prediction)

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
        """Samples for `prompt` (the memorized caption) with classifier-free guidance, DDIM η = 0."""
        pipeline = StableDiffusionPipeline(
            **self._components(unet),
            scheduler=DDIMScheduler.from_config(self.scheduler.config),
        )
        pipeline.set_progress_bar_config(disable=True)
        generator = torch.Generator().manual_seed(seed)

        def draw(size: int) -> np.ndarray:
            shape = (size, self.unet.config.in_channels, *self.latent_size)
            latents = torch.randn(shape, generator=generator).to(self.unet.device)
            return pipeline(
                [prompt or ""] * size,
                latents=latents,
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                output_type="np",
            ).images

        return sample_in_chunks(count, GENERATION_BATCH, draw)

    def save(self, unet: torch.nn.Module, path: Path) -> None:
        StableDiffusionPipeline(**self._components(unet), scheduler=self.pipeline.scheduler).save_pretrained(
            path, safe_serialization=True
        )

    def _components(self, unet: torch.nn.Module) -> dict[str, Any]:
        return {
            "vae": self.vae,
            "text_encoder": self.text_encoder,
            "tokenizer": self.tokenizer,
            "unet": unet,
            "safety_checker": None,
            "feature_extractor": None,
            "requires_safety_checker": False,
        }
