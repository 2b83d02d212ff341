"""Build tiny diffusers pipelines and image folders in code (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from PIL import Image


def tiny_unet(
    *,
    sample_size: int = 8,
    channels: int = 1,
    block_out_channels: tuple[int, ...] = (16, 32),
    seed: int = 0,
    dropout: float = 0.0,
) -> UNet2DModel:
    """A small UNet2DModel (plain down/up blocks, attention only in the mid block)."""
    torch.manual_seed(seed)
    depth = len(block_out_channels)
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        layers_per_block=1,
        block_out_channels=block_out_channels,
        down_block_types=("DownBlock2D",) * depth,
        up_block_types=("UpBlock2D",) * depth,
        norm_num_groups=8,
        attention_head_dim=8,
        dropout=dropout,
    )


def ddpm_scheduler(num_train_timesteps: int = 1000) -> DDPMScheduler:
    """The linear β schedule 1e-4 → 0.02 of Ho et al. (2020)."""
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps, beta_schedule="linear", beta_start=1e-4, beta_end=0.02
    )


def save_pipeline(unet: UNet2DModel, scheduler: DDPMScheduler, folder: Path) -> Path:
    """Write a DDPMPipeline folder with safetensors weights."""
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder, safe_serialization=True)
    return folder


def write_image_folder(images: np.ndarray, folder: Path, *, prefix: str = "img") -> Path:
    """Write uint8 images (N, H, W) or (N, H, W, C) as PNG files."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        Image.fromarray(np.ascontiguousarray(image)).save(folder / f"{prefix}-{index:05d}.png")
    return folder
