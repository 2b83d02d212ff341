"""Read an image folder in the Hugging Face `imagefolder` layout into memory.

Layout: image files anywhere below the root (sub-folders allowed), plus an optional `metadata.jsonl` whose rows
carry `file_name` and, for text-conditioned models, a `text` caption. Images are kept as uint8 and converted to
[−1, 1] per batch, so a retain set of 60,000 28×28 digits takes 47 MB.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from unlearning_trainer.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
CAPTION_COLUMNS = ("text", "caption", "prompt")


@dataclass(frozen=True)
class ImageSet:
    """Images as uint8 (N, C, H, W), their file names, sha256 digests of the files, and optional captions."""

    pixels: torch.Tensor
    names: list[str]
    digests: list[str]
    captions: list[str] | None

    def __len__(self) -> int:
        return len(self.names)

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        """Images at `indices`, as float32 in [−1, 1]."""
        return self.pixels[indices].float() / 127.5 - 1.0

    def captions_at(self, indices: torch.Tensor) -> list[str] | None:
        return None if self.captions is None else [self.captions[i] for i in indices.tolist()]

    def unique(self) -> ImageSet:
        """One entry per distinct file content (a forget set of 36 identical copies counts once)."""
        first = {digest: i for i, digest in reversed(list(enumerate(self.digests)))}
        keep = sorted(first.values())
        return ImageSet(
            pixels=self.pixels[keep],
            names=[self.names[i] for i in keep],
            digests=[self.digests[i] for i in keep],
            captions=None if self.captions is None else [self.captions[i] for i in keep],
        )


def _read_captions(root: Path) -> dict[str, str]:
    metadata = root / "metadata.jsonl"
    if not metadata.is_file():
        return {}
    captions = {}
    for number, line in enumerate(metadata.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        if "file_name" not in row:
            raise DataError(f"{metadata}:{number}: every row needs a file_name. Fix: add it to the row.")
        caption = next((row[c] for c in CAPTION_COLUMNS if c in row), None)
        if caption is not None:
            captions[row["file_name"]] = str(caption)
    return captions


def _has_colour(image: Image.Image) -> bool:
    """Whether an image holds colour (a grayscale picture saved as RGB does not)."""
    if image.mode in ("1", "L", "LA", "I", "I;16", "F"):
        return False
    red, green, blue = (np.asarray(band, dtype=np.int16) for band in image.convert("RGB").split())
    return bool((red != green).any() or (green != blue).any())


def load_image_folder(root: Path, *, field: str, image_shape: tuple[int, int, int]) -> ImageSet:
    """Load every image below `root`, checking that it matches the model's (channels, height, width).

    Args:
        root: the folder.
        field: the spec field that named the folder, used in error messages.
        image_shape: the shape the model expects.
    """
    if not root.is_dir():
        raise DataError(f"{field}: {root} is not a folder. Fix: point it at an image folder.")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{field}: {root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}). Fix: add some.")
    channels, height, width = image_shape
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise DataError(f"spec.model.uri: models with {channels} channels are not supported (use 1 or 3).")
    captions = _read_captions(root)
    arrays, names, digests = [], [], []
    for path in files:
        name = path.relative_to(root).as_posix()
        content = path.read_bytes()
        try:
            with Image.open(path) as image:
                if image.size != (width, height):
                    raise DataError(
                        f"{field}: {name} is {image.size[0]}×{image.size[1]} but the model expects "
                        f"{width}×{height}. Fix: resize the images to {width}×{height} or use a model trained at "
                        "that size."
                    )
                if channels == 1 and _has_colour(image):
                    raise DataError(
                        f"{field}: {name} is a colour image but the model has 1 channel (grayscale). Fix: convert "
                        "the images to grayscale, or use a 3-channel model."
                    )
                array = np.asarray(image.convert(mode), dtype=np.uint8)
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(
                f"{field}: {name} is not a readable image ({exc}). Fix: replace the file or remove it."
            ) from None
        arrays.append(array.reshape(height, width, channels).transpose(2, 0, 1))
        names.append(name)
        digests.append(hashlib.sha256(content).hexdigest())
    caption_list = [captions.get(name, "") for name in names] if captions else None
    return ImageSet(torch.from_numpy(np.stack(arrays)), names, digests, caption_list)
