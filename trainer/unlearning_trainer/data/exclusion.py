"""One pass over the training (or retain) set: drop copies of the forget images and measure how close the rest is.

A copy is found by the hash of its decoded pixels, so a re-encoded file (another PNG compressor, a TIFF) is still
a copy; a near-duplicate (a re-saved JPEG, a slightly edited image) by its root-mean-square distance per pixel.
The same pass reports the smallest distance between a kept image and a forget image, the ceiling for
`evaluation.memorizationThreshold`: above it, an ordinary retained image would count as a memorized copy.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from unlearning_trainer.data.decode import check_channels, pixel_digest
from unlearning_trainer.data.images import ImageSet, decode_at
from unlearning_trainer.data.sources import Source

CHUNK_ELEMENTS = 1 << 18
"""Pixel values decoded and compared at once (2 MB as float64): bounds the pass's memory at any image size. Larger
chunks are not faster (decoding dominates) and make glibc's allocator keep hundreds of MB of freed chunks."""


@dataclass(frozen=True)
class Census:
    """What the pass found. In exclusion mode the copies and near-duplicates are not in `kept`."""

    scanned: int
    kept: np.ndarray
    exact_copies: int
    near_duplicates: int
    forget_found: int
    """Distinct forget images with at least one copy or near-duplicate in the scanned set."""
    nearest_distance: float | None
    """Smallest L2 distance (pixels in [0, 1]) from an image that is neither a copy nor a near-duplicate to a forget
    image."""
    digest: str = ""
    """sha256 over the kept images' pixel digests, in order: what the retain set is, for checkpoints and audits."""

    def summary(self, *, excluded: bool) -> dict[str, object]:
        return {
            "scanned": self.scanned,
            "exactCopies": self.exact_copies,
            "nearDuplicates": self.near_duplicates,
            "excluded": self.exact_copies + self.near_duplicates if excluded else 0,
            "forgetFound": self.forget_found,
            "nearestKeptDistance": self.nearest_distance,
        }


def l2_distances(images: torch.Tensor, forget: torch.Tensor) -> torch.Tensor:
    """D_ij = ‖x_i − f_j‖₂ over flattened pixels in [0, 1]."""
    squared = images.pow(2).sum(1, keepdim=True) + forget.pow(2).sum(1) - 2.0 * images @ forget.T
    return squared.clamp_min(0.0).sqrt()


def rms(l2: torch.Tensor, pixels: int) -> torch.Tensor:
    """Root-mean-square distance per pixel from an L2 distance over `pixels` values: ‖x − f‖₂ / √D."""
    return l2 / math.sqrt(pixels)


def scan(
    source: Source,
    forget: ImageSet,
    image_shape: tuple[int, int, int],
    *,
    exclude: bool,
    near_duplicate_distance: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
) -> Census:
    """Decode every record once (which also validates it), find copies of the forget images, keep the rest.

    Args:
        exclude: drop copies and near-duplicates (a training set); otherwise only count them (a retain set).
        near_duplicate_distance: RMS distance per pixel at or under which an image is a near-duplicate; 0 finds
            exact copies only.
        progress: called with (records done, total) after each chunk.
    """
    check_channels(image_shape)
    unique = forget.unique()
    forget_hashes = {pixel_digest(pixels.numpy()): j for j, pixels in enumerate(unique.pixels)}
    forget_flat = unique.pixels.reshape(len(unique), -1).double() / 255.0
    pixels = forget_flat.shape[1]
    chunk = max(1, min(4096, CHUNK_ELEMENTS // pixels))
    total = len(source)
    kept: list[np.ndarray] = []
    exact = near = 0
    found = np.zeros(len(unique), dtype=bool)
    nearest = math.inf
    retained = hashlib.sha256()
    for start in range(0, total, chunk):
        positions = np.arange(start, min(start + chunk, total))
        records = source.read_many(positions.tolist())
        arrays = [decode_at(source, int(p), data, image_shape) for p, (data, _) in zip(positions, records, strict=True)]
        hashes = [pixel_digest(a) for a in arrays]
        copies = np.array([forget_hashes.get(h, -1) for h in hashes])
        flat = torch.from_numpy(np.stack(arrays).reshape(len(arrays), -1)).double() / 255.0
        distances = l2_distances(flat, forget_flat)
        close = rms(distances, pixels) <= near_duplicate_distance if near_duplicate_distance > 0 else None
        is_copy = copies >= 0
        is_near = ~is_copy & (close.any(1).numpy() if close is not None else False)
        found[copies[is_copy]] = True
        if close is not None:
            found |= close[torch.from_numpy(is_near)].any(0).numpy()
        exact += int(is_copy.sum())
        near += int(is_near.sum())
        keep = ~(is_copy | is_near) if exclude else np.ones(len(arrays), dtype=bool)
        kept.append(positions[keep])
        for index in np.flatnonzero(keep):
            retained.update(bytes.fromhex(hashes[index]))
        others = ~(is_copy | is_near)
        if others.any():
            nearest = min(nearest, float(distances[torch.from_numpy(others)].min()))
        if progress is not None:
            progress(int(positions[-1]) + 1, total)
    return Census(
        scanned=total,
        kept=np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64),
        exact_copies=exact,
        near_duplicates=near,
        forget_found=int(found.sum()),
        nearest_distance=None if math.isinf(nearest) else nearest,
        digest=retained.hexdigest(),
    )
