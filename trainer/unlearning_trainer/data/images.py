"""Image sets the training loop samples from: the forget set in memory, the retain set streamed from disk.

Both hand out batches as float32 in [−1, 1] with their captions, so the loop and the evaluator never know which
one they hold. Pixels are decoded per batch from the source, so memory does not grow with the retain set.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from unlearning_trainer.data.decode import BadImage, check_channels, decode_image
from unlearning_trainer.data.sources import Source

CAPTION_CHUNK = 256
"""Records read at a time when only the captions are wanted."""

Batch = tuple[torch.Tensor, list[str] | None]
"""Images (N, C, H, W) as float32 in [−1, 1], and their captions when the dataset has them."""


def to_unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float32 [−1, 1]."""
    return pixels.float() / 127.5 - 1.0


class Images(Protocol):
    def __len__(self) -> int: ...

    def take(self, indices: torch.Tensor) -> Batch: ...


@dataclass(frozen=True)
class ImageSet:
    """Images held as uint8 (N, C, H, W), their names, sha256 digests of the encoded files, and optional captions."""

    pixels: torch.Tensor
    names: list[str]
    digests: list[str]
    captions: list[str] | None

    def __len__(self) -> int:
        return len(self.names)

    def take(self, indices: torch.Tensor) -> Batch:
        captions = None if self.captions is None else [self.captions[i] for i in indices.tolist()]
        return to_unit_range(self.pixels[indices]), captions

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


def decode_at(source: Source, position: int, content: bytes, image_shape: tuple[int, int, int]) -> np.ndarray:
    """Decode one record of `source`, naming it and the spec field if it is not an image the model can take."""
    try:
        return decode_image(content, image_shape)
    except BadImage as problem:
        raise problem.explain(source.field, source.name(position)) from None


def load_images(source: Source, image_shape: tuple[int, int, int]) -> ImageSet:
    """Read and decode a whole (small) source into memory: the forget set."""
    check_channels(image_shape)
    positions = range(len(source))
    records = source.read_many(positions)
    arrays = [decode_at(source, i, content, image_shape) for i, (content, _) in zip(positions, records, strict=True)]
    captions = [caption or "" for _, caption in records] if source.has_captions else None
    return ImageSet(
        pixels=torch.from_numpy(np.stack(arrays)),
        names=[source.name(i) for i in positions],
        digests=[hashlib.sha256(content).hexdigest() for content, _ in records],
        captions=captions,
    )


class StreamedImages:
    """The records of `source` at `positions`, decoded when a batch asks for them."""

    def __init__(self, source: Source, positions: np.ndarray, image_shape: tuple[int, int, int]) -> None:
        self.source = source
        self.positions = positions
        self.image_shape = image_shape

    def __len__(self) -> int:
        return len(self.positions)

    def take(self, indices: torch.Tensor) -> Batch:
        wanted = self.positions[indices.numpy()].tolist()
        records = self.source.read_many(wanted)
        shape = self.image_shape
        arrays = [decode_at(self.source, p, data, shape) for p, (data, _) in zip(wanted, records, strict=True)]
        captions = [caption or "" for _, caption in records] if self.source.has_captions else None
        return to_unit_range(torch.from_numpy(np.stack(arrays))), captions

    def captions(self) -> list[str] | None:
        """Every image's caption, in order, read without decoding the images (a chunk of records at a time)."""
        if not self.source.has_captions:
            return None
        positions = self.positions.tolist()
        return [
            caption or ""
            for start in range(0, len(positions), CAPTION_CHUNK)
            for _, caption in self.source.read_many(positions[start : start + CAPTION_CHUNK])
        ]
