"""Encoded images (JPEG, PNG, GIF, BMP) -> a batch shaped for an image input.

An input accepts images when its shape is [-1, height, width, channels] with
known height and width, channels 1 (grayscale), 3 (RGB) or 4 (RGBA), and a
float or uint8 dtype. Images are converted to that many channels and resized
(bilinear) to height x width; float inputs receive values scaled to [0, 1],
uint8 inputs the raw 0..255 values.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from server.errors import InvalidArgument

_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
MAX_IMAGE_PIXELS = 50_000_000


def accepts_images(shape: tuple[int, ...], dtype: np.dtype) -> bool:
    """Whether an input of this spec can be fed with encoded images."""
    return (
        len(shape) == 4
        and shape[1] > 0
        and shape[2] > 0
        and shape[3] in _MODES
        and (dtype.kind == "f" or dtype == np.uint8)
    )


def decode_images(name: str, images: list[bytes], shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Decode and resize each image; errors name the input and the image index."""
    if not images:
        raise InvalidArgument(f"input '{name}': images is empty; send at least one encoded image")
    _, height, width, channels = shape
    batch = np.empty((len(images), height, width, channels), dtype=dtype)
    for i, data in enumerate(images):
        pixels = _decode_one(name, i, data, _MODES[channels], (width, height))
        pixels = pixels.reshape(height, width, channels)
        batch[i] = pixels / np.float32(255.0) if dtype.kind == "f" else pixels
    return batch


def _decode_one(name: str, index: int, data: bytes, mode: str, size: tuple[int, int]) -> np.ndarray:
    if not data:
        raise InvalidArgument(f"input '{name}': image {index} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > MAX_IMAGE_PIXELS:
                    raise InvalidArgument(
                        f"input '{name}': image {index} has {image.width}x{image.height} pixels; "
                        f"the limit is {MAX_IMAGE_PIXELS}"
                    )
                converted = image.convert(mode)
                if converted.size != size:
                    converted = converted.resize(size, Image.Resampling.BILINEAR)
                return np.asarray(converted, dtype=np.uint8)
    except InvalidArgument:
        raise
    except Exception as exc:  # Pillow raises many types for corrupt data
        reason = "unknown format" if isinstance(exc, UnidentifiedImageError) else str(exc)
        raise InvalidArgument(
            f"input '{name}': image {index} is not a decodable JPEG, PNG, GIF or BMP image ({reason})"
        ) from None
