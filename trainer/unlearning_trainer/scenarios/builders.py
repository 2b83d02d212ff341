"""Build tiny diffusers pipelines and image folders in code (nothing is downloaded)."""

from __future__ import annotations

import json
import tempfile
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


def character_tokenizer(max_length: int = 16):
    """A CLIP tokenizer whose vocabulary is the printable ASCII characters (no merges: one token per character)."""
    from transformers import CLIPTokenizer

    characters = [chr(code) for code in range(33, 127)]
    tokens = characters + [c + "</w>" for c in characters] + ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as folder:
        vocab, merges = Path(folder) / "vocab.json", Path(folder) / "merges.txt"
        vocab.write_text(json.dumps({token: index for index, token in enumerate(tokens)}))
        merges.write_text("#version: 0.2\n")
        return CLIPTokenizer(str(vocab), str(merges), model_max_length=max_length)


def save_text_to_image_pipeline(folder: Path, *, image_size: int = 16, seed: int = 0) -> Path:
    """Write a tiny, untrained StableDiffusionPipeline (VAE ×2 downsampling, 4 latent channels, CLIP text
    encoder of width 32) with safetensors weights: the latent, text-conditioned model of the tests."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = character_tokenizer()
    end = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.convert_tokens_to_ids("<|startoftext|>"),
            eos_token_id=end,
            pad_token_id=end,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=image_size,
    )
    unet = UNet2DConditionModel(
        sample_size=image_size // 2,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        steps_offset=1,
    )
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


def write_captions(folder: Path, captions: dict[str, str]) -> Path:
    """metadata.jsonl with a `text` caption per file name (the Hugging Face image-folder convention)."""
    lines = [json.dumps({"file_name": name, "text": text}) for name, text in sorted(captions.items())]
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def write_image_folder(images: np.ndarray, folder: Path, *, prefix: str = "img") -> Path:
    """Write uint8 images (N, H, W) or (N, H, W, C) as PNG files."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        Image.fromarray(np.ascontiguousarray(image)).save(folder / f"{prefix}-{index:05d}.png")
    return folder
