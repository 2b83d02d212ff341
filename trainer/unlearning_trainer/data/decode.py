"""Decode one encoded image into the model's pixel layout, with errors that name the file and the fix."""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image

from unlearning_trainer.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
CAPTION_COLUMNS = ("text", "caption", "prompt")
MODES = {1: "L", 3: "RGB"}


def check_channels(image_shape: tuple[int, int, int]) -> None:
    if image_shape[0] not in MODES:
        raise DataError(f"spec.model.uri: models with {image_shape[0]} channels are not supported (use 1 or 3).")


def _has_colour(image: Image.Image) -> bool:
    """Whether an image holds colour (a grayscale picture saved as RGB does not)."""
    if image.mode in ("1", "L", "LA", "I", "I;16", "F"):
        return False
    red, green, blue = (np.asarray(band, dtype=np.int16) for band in image.convert("RGB").split())
    return bool((red != green).any() or (green != blue).any())


class BadImage(ValueError):
    """An image the model cannot take; `explain` names the file and the spec field."""

    def explain(self, field: str, name: str) -> DataError:
        return DataError(f"{field}: {name} {self}")


def decode_image(content: bytes, image_shape: tuple[int, int, int]) -> np.ndarray:
    """The image as uint8 (C, H, W) in the model's channel layout.

    Raises:
        BadImage: when the bytes are not an image, or its size or colour does not fit the model.
    """
    channels, height, width = image_shape
    try:
        with Image.open(io.BytesIO(content)) as image:
            if image.size != (width, height):
                raise BadImage(
                    f"is {image.size[0]}×{image.size[1]} but the model expects {width}×{height}. Fix: resize the "
                    f"images to {width}×{height} or use a model trained at that size."
                )
            if channels == 1 and _has_colour(image):
                raise BadImage(
                    "is a colour image but the model has 1 channel (grayscale). Fix: convert the images to "
                    "grayscale, or use a 3-channel model."
                )
            array = np.asarray(image.convert(MODES[channels]), dtype=np.uint8)
    except BadImage:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"is not a readable image ({exc}). Fix: replace the file or remove it.") from None
    return array.reshape(height, width, channels).transpose(2, 0, 1)


def pixel_digest(pixels: np.ndarray) -> str:
    """sha256 of the decoded pixels and their shape: equal for the same picture in any lossless encoding."""
    digest = hashlib.sha256(repr(pixels.shape).encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()
