"""ReTrack's k nearest retain images of every forget image, found once before training.

Distances are Euclidean in the space the U-Net denoises (pixels in [−1, 1], or VAE latents for latent models), as
in the ReTrack paper. The retain set is scanned in chunks, so it is never held whole; only the k neighbours of
each forget image are kept, already encoded, for the training loop to pick from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from unlearning_trainer.data.images import Images
from unlearning_trainer.errors import DataError

logger = logging.getLogger("unlearning_trainer.training")

CHUNK_ELEMENTS = 1 << 22
"""Pixel values encoded at once while scanning (16 MB of float32): 256 images at 64×64 RGB, 5 at 512×512."""
Encode = Callable[[torch.Tensor], torch.Tensor]
"""Images in [−1, 1] → the tensors the U-Net denoises."""


@dataclass(frozen=True)
class Neighbours:
    """Per forget image: retain-set indices (F, k), Euclidean distances (F, k), and the encoded images (F, k, ...)."""

    indices: torch.Tensor
    distances: torch.Tensor
    encoded: torch.Tensor

    def take(self, forget_indices: torch.Tensor) -> torch.Tensor:
        """The neighbours of the forget images at `forget_indices`: (B, k, ...)."""
        return self.encoded[forget_indices]


def nearest(
    queries: torch.Tensor, chunks: Iterable[tuple[int, torch.Tensor]], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices and distances of the k candidates nearest each query row, ascending; chunks are (offset, rows)."""
    best_distance = torch.full((len(queries), 0), float("inf"), dtype=torch.float64)
    best_index = torch.zeros((len(queries), 0), dtype=torch.long)
    for offset, rows in chunks:
        distance = torch.cdist(queries.double(), rows.double())
        index = torch.arange(offset, offset + len(rows)).expand(len(queries), -1)
        merged_distance = torch.cat([best_distance, distance], 1)
        merged_index = torch.cat([best_index, index], 1)
        order = merged_distance.argsort(dim=1, stable=True)[:, :k]
        best_distance, best_index = merged_distance.gather(1, order), merged_index.gather(1, order)
    return best_index, best_distance


@torch.no_grad()
def find_neighbours(retain: Images, forget: Images, k: int, encode: Encode, device: torch.device) -> Neighbours:
    """Scan the retain set once and keep each forget image's k nearest retain images, encoded."""
    if k > len(retain):
        raise DataError(
            f"spec.method.k is {k} but the retain set has only {len(retain)} images: ReTrack redirects each forget "
            "image to its k nearest retain images. Fix: lower spec.method.k or keep more data."
        )
    forget_images, _ = forget.take(torch.arange(len(forget)))
    queries = encode(forget_images.to(device)).flatten(1).cpu()

    chunk = max(1, CHUNK_ELEMENTS // forget_images[0].numel())

    def chunks() -> Iterable[tuple[int, torch.Tensor]]:
        for offset in range(0, len(retain), chunk):
            images, _ = retain.take(torch.arange(offset, min(offset + chunk, len(retain))))
            yield offset, encode(images.to(device)).flatten(1).cpu()

    indices, distances = nearest(queries, chunks(), k)
    distinct, position = indices.unique(return_inverse=True)
    images, _ = retain.take(distinct)
    encoded = encode(images.to(device)).float().cpu()[position]
    logger.info(
        "ReTrack: %d nearest retain images per forget image (%d distinct); nearest distance %.3g, k-th %.3g (median)",
        k,
        len(distinct),
        distances[:, 0].median().item(),
        distances[:, -1].median().item(),
    )
    return Neighbours(indices=indices, distances=distances.float(), encoded=encoded)
