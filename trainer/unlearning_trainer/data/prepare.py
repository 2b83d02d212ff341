"""The data of a job: the forget set in memory, the retain set streamed, and what the pass over it found."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unlearning_trainer.advice import data_warnings
from unlearning_trainer.data.decode import pixel_digest
from unlearning_trainer.data.exclusion import scan
from unlearning_trainer.data.generated import RECORD
from unlearning_trainer.data.images import ImageSet, StreamedImages, load_images
from unlearning_trainer.data.sources import open_source
from unlearning_trainer.errors import DataError
from unlearning_trainer.spec import UnlearningJobSpec
from unlearning_trainer.training.fingerprint import data_digest

logger = logging.getLogger("unlearning_trainer.data")

Fetch = Callable[[str, str], Path]
"""(uri, spec field) → a local folder with its contents."""
PROGRESS_FROM = 1000
"""Datasets at least this large log the pass's progress every tenth."""


GenerateRetain = Callable[[ImageSet], Path]
"""forget set → the folder of a generated retain set (data.retain.generate, data/generated.py)."""


def prepare_data(
    spec: UnlearningJobSpec,
    fetch: Fetch,
    image_shape: tuple[int, int, int],
    generate: GenerateRetain | None = None,
) -> tuple[ImageSet, StreamedImages, dict[str, Any]]:
    """The forget set, the retain set (data.train minus the forget images, data.retain, or the base model's
    generations from `generate`) and a summary of the pass that built it: counts, the nearest retained image's
    distance, and warnings worth a look.

    Raises:
        DataError: for missing, empty or unreadable data, or a training set with nothing left to keep.
    """
    forget_source = open_source(
        fetch(spec.data.forget.uri, "spec.data.forget.uri"), field="spec.data.forget.uri", fmt=spec.data.forget.format
    )
    forget = load_images(forget_source, image_shape)
    field, location = spec.data.kept
    if location.uri is None:
        if generate is None:
            raise ValueError(f"{field} needs a generator of the retain set")
        folder = generate(forget)
        source = open_source(folder, field=field, fmt="imagefolder")
    else:
        source = open_source(fetch(location.uri, field), field=field, fmt=location.format)
    excluding = spec.data.train is not None
    tenths_logged = 0

    def progress(done: int, total: int) -> None:
        """Log when a chunk crosses into a new tenth (chunks may be larger than a tenth, or much smaller)."""
        nonlocal tenths_logged
        if done * 10 // total > tenths_logged:
            tenths_logged = done * 10 // total
            logger.info("checked %d of %d images of %s", done, total, field)

    census = scan(
        source,
        forget,
        image_shape,
        exclude=excluding,
        near_duplicate_distance=spec.data.near_duplicate_distance,
        progress=progress if len(source) >= PROGRESS_FROM else None,
    )
    if not len(census.kept):
        raise DataError(
            f"{field}: every image in it is a copy of a forget image, so nothing is left to keep. Fix: point "
            "data.train at the whole training set."
        )
    distinct = len(forget.unique())
    warnings = data_warnings(spec, census, forget_unique=distinct, excluding=excluding, values=math.prod(image_shape))
    for warning in warnings:
        logger.warning("%s", warning)
    summary = {
        "retainFrom": "train" if excluding else "generated" if location.uri is None else "retain",
        "forget": len(forget),
        "forgetUnique": distinct,
        "retain": len(census.kept),
        **census.summary(excluded=excluding),
        "sha256": data_digest(forget.digests, census.digest),
        "warnings": warnings,
    }
    if location.uri is None:
        summary["generated"] = json.loads((folder / RECORD).read_text())["captions"]
    return forget, StreamedImages(source, census.kept, image_shape), summary


def load_holdout(
    spec: UnlearningJobSpec, fetch: Fetch, image_shape: tuple[int, int, int], forget: ImageSet
) -> ImageSet | None:
    """data.holdout, the membership check's non-members; None when the job has none.

    Raises:
        DataError: when it cannot be read, or holds a copy of a forget image (a training image is no non-member).
    """
    location = spec.data.holdout
    if location is None:
        return None
    field = "spec.data.holdout.uri"
    holdout = load_images(open_source(fetch(location.uri, field), field=field, fmt=location.format), image_shape)
    forgotten = {pixel_digest(image) for image in forget.pixels.numpy()}
    copies = sum(pixel_digest(image) in forgotten for image in holdout.pixels.numpy())
    if copies:
        raise DataError(
            f"{field}: {copies} of its {len(holdout)} images are copies of forget images, but the membership check "
            "needs images the model never trained on. Fix: remove them from the holdout set."
        )
    return holdout
