"""The interface the training loop and the evaluation see, whatever diffusers pipeline sits behind it.

A pixel-space DDPM (UNet2DModel) and a latent, text-conditioned model (UNet2DConditionModel with a frozen VAE
and text encoder) differ only in how images enter the diffusion space, what conditions the U-Net, how samples
are generated and how the pipeline is saved. Everything else (objectives, weights, norm fixing) is shared.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from unlearning_trainer.objectives.losses import Denoiser


class DiffusionAdapter(Protocol):
    """A trainable ε-prediction U-Net plus what is needed to feed, sample and save it."""

    kind: str
    unet: torch.nn.Module
    """The only trainable module."""
    alphas_cumprod: torch.Tensor
    """ᾱ_t for t = 0..T−1, from the scheduler (float64)."""
    betas: torch.Tensor
    """β_t for t = 0..T−1 (float64)."""
    image_shape: tuple[int, int, int]
    """(channels, height, width) of the images the data must have."""
    discrete: bool
    """Whether the diffused tensors are 8-bit pixels (True) or continuous latents (False); the likelihood
    needs to know."""

    def to(self, device: torch.device) -> None:
        """Move every module (the U-Net and any frozen encoders) to `device`."""
        ...

    def to_diffusion_space(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [−1, 1] → the tensors the U-Net denoises (identity for pixel models, VAE latents otherwise)."""
        ...

    def denoiser(self, unet: torch.nn.Module, captions: list[str] | None) -> Denoiser:
        """ε_θ(m, t) through `unet` (possibly wrapped by accelerate), conditioned on the captions if any."""
        ...

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
        """`count` samples in [0, 1], shape (count, *image_shape), deterministic for a seed (DDIM, η = 0).

        Text-conditioned models sample for `prompt` with classifier-free guidance; pixel models ignore both."""
        ...

    def save(self, unet: torch.nn.Module, path: Path) -> None:
        """Write the whole pipeline with `unet` as its U-Net to `path` (safetensors only)."""
        ...


def spatial_size(sample_size: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) from a U-Net config's `sample_size`, which is one int for square models."""
    return (sample_size, sample_size) if isinstance(sample_size, int) else tuple(sample_size)


def sample_in_chunks(count: int, chunk: int, draw: Callable[[int], np.ndarray]) -> torch.Tensor:
    """`count` samples from `draw(size)` (a pipeline's (size, H, W, C) numpy output in [0, 1]) in chunks of at
    most `chunk`, as one float tensor (count, C, H, W)."""
    parts = []
    for start in range(0, count, chunk):
        images = draw(min(chunk, count - start))
        parts.append(torch.from_numpy(images).permute(0, 3, 1, 2).float())
    return torch.cat(parts)
