"""`data.retain.generate`: the retain set the SISS paper uses for a memorized prompt.

For each distinct forget caption the base model generates `imagesPerCaption` images for that caption; those
within the memorization threshold of a forget image (evaluation's criterion) are dropped and the rest are kept
under the caption they were generated for. Pairing each forget image with keep images of its own caption
(`caption_groups`) then evaluates the SISS forget term under the forget caption, as in the paper, where an
ordinary retain set would condition the whole mixture on unrelated captions.

The set is written as an image folder (PNG files, captions in metadata.jsonl) with a `generated.json` that
records what made it; a folder whose record matches is reused instead of sampling again, so a resumed or
rerun job trains on exactly the same images (sampling on a GPU need not be bitwise reproducible).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from unlearning_trainer.data.images import ImageSet
from unlearning_trainer.errors import DataError
from unlearning_trainer.evaluation.metrics import nearest_distances
from unlearning_trainer.models.adapter import DiffusionAdapter
from unlearning_trainer.spec import UnlearningJobSpec

logger = logging.getLogger("unlearning_trainer.data")

FOLDER = "retain-generated"
"""Where the set lives in the output (and so in the output store)."""
RECORD = "generated.json"
FIELD = "spec.data.retain.generate"


def distinct_captions(forget: ImageSet) -> list[str | None]:
    """The forget set's captions in first-seen order, or [None] for an unconditional model's data."""
    if forget.captions is None:
        return [None]
    return list(dict.fromkeys(forget.captions))


def settings_of(spec: UnlearningJobSpec, forget: ImageSet, model_digest: str) -> dict[str, Any]:
    """Everything that decides which images the set holds."""
    assert spec.data.retain is not None and spec.data.retain.generate is not None
    return {
        "model": model_digest,
        "forget": hashlib.sha256("".join(sorted(forget.digests)).encode()).hexdigest(),
        "captions": distinct_captions(forget),
        "imagesPerCaption": spec.data.retain.generate.images_per_caption,
        "inferenceSteps": spec.evaluation.inference_steps,
        "guidanceScale": spec.evaluation.guidance_scale,
        "threshold": spec.evaluation.l2_threshold(int(np.prod(forget.pixels.shape[1:]))),
        "seed": spec.training.seed,
    }


def is_current(folder: Path, settings: dict[str, Any]) -> bool:
    """Whether `folder` holds a finished set made with these settings."""
    record = folder / RECORD
    return record.is_file() and json.loads(record.read_text()).get("settings") == settings


def generate_retain(
    adapter: DiffusionAdapter, settings: dict[str, Any], forget: ImageSet, folder: Path
) -> dict[str, Any]:
    """Sample the set that `settings` (settings_of) describe into `folder`, replacing what is there, and return
    its record.

    Raises:
        DataError: when every generation for a caption is a memorization hit, so that caption has nothing to keep.
    """
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    references = forget.pixels.float() / 255.0
    rows, per_caption = [], []
    for index, caption in enumerate(settings["captions"]):
        samples = adapter.generate(
            adapter.unet,
            settings["imagesPerCaption"],
            seed=settings["seed"] + index,
            steps=settings["inferenceSteps"],
            prompt=caption,
            guidance_scale=settings["guidanceScale"],
        )
        hits = nearest_distances(samples, references) < settings["threshold"]
        kept = samples[~hits]
        per_caption.append({"caption": caption, "generated": len(samples), "dropped": int(hits.sum())})
        logger.info(
            "generated %d retain images for caption %d of %d (%d memorization hits dropped)",
            len(kept),
            index + 1,
            len(settings["captions"]),
            int(hits.sum()),
        )
        if not len(kept):
            raise DataError(
                f"{FIELD}: all {len(samples)} generations for the forget caption {caption!r} are memorization hits, "
                "so nothing is left to keep for it. Fix: raise imagesPerCaption, or give a retain set with "
                "data.retain.uri."
            )
        for number, image in enumerate(kept):
            name = f"{index:04d}-{number:05d}.png"
            _save_png(image, folder / name)
            rows.append({"file_name": name, **({} if caption is None else {"text": caption})})
    if settings["captions"] != [None]:
        (folder / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    record = {"settings": settings, "captions": per_caption, "images": len(rows)}
    (folder / RECORD).write_text(json.dumps(record, indent=1))
    return record


def _save_png(image: torch.Tensor, path: Path) -> None:
    """A (C, H, W) image in [0, 1] as an 8-bit PNG (grayscale for one channel)."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).save(path)


def caption_groups(forget_captions: Sequence[str] | None, retain_captions: Sequence[str]) -> list[torch.Tensor]:
    """For each forget image, the indices of the retain images that share its caption."""
    if forget_captions is None:
        raise ValueError("pairing by caption needs captioned data")
    by_caption: dict[str, list[int]] = {}
    for index, caption in enumerate(retain_captions):
        by_caption.setdefault(caption, []).append(index)
    return [torch.tensor(by_caption[caption]) for caption in forget_captions]


def paired_keep_indices(draws: torch.Tensor, forget_indices: torch.Tensor, groups: list[torch.Tensor]) -> torch.Tensor:
    """Keep image j of a micro-batch: member (draw_j mod |G|) of G, the group of forget image j's caption."""
    return torch.stack(
        [groups[f][d % len(groups[f])] for d, f in zip(draws.tolist(), forget_indices.tolist(), strict=True)]
    )
