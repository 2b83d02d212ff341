"""Sample grids as PNG files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def image_grid(images: torch.Tensor, *, columns: int | None = None, scale: int = 1, padding: int = 1) -> Image.Image:
    """Tile images (N, C, H, W) in [0, 1] into one picture, nearest-neighbour upscaled by `scale`."""
    count, channels, height, width = images.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    cell_h, cell_w = height * scale + padding, width * scale + padding
    canvas = np.full((rows * cell_h + padding, columns * cell_w + padding, channels), 255, dtype=np.uint8)
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for index in range(count):
        row, column = divmod(index, columns)
        tile = pixels[index].repeat(scale, axis=0).repeat(scale, axis=1)
        top, left = padding + row * cell_h, padding + column * cell_w
        canvas[top : top + height * scale, left : left + width * scale] = tile
    return Image.fromarray(canvas[..., 0] if channels == 1 else canvas)


def save_grid(images: torch.Tensor, path: Path, *, scale: int | None = None) -> Path:
    """Write a grid PNG; small images are upscaled so that a cell is at least 64 pixels wide."""
    scale = scale or max(1, 64 // images.shape[-1])
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, scale=scale).save(path)
    return path
