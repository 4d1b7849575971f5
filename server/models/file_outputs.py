"""File outputs: model outputs delivered as stored files (PNG images) instead of tensors.

A model declares them in `models/<name>/serving.json`:

    {"file_outputs": {"image": {"format": "png"}}}

Such an output must hold one image per batch row: shape [-1, H, W] or
[-1, H, W, C] with C 1 (grayscale), 3 (RGB) or 4 (RGBA); uint8 values are
used as they are, float values are read as [0, 1] (clipped) and scaled to
0..255. The Predictor encodes each row and stores it in the ObjectStore.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from server.models.backend import TensorInfo

CONTENT_TYPES = {"png": "image/png"}
_CHANNELS = (1, 3, 4)


@dataclass(frozen=True)
class FileOutput:
    """An output stored as files of `format`, one per batch row."""

    name: str
    format: str

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]

    def encode(self, row: np.ndarray) -> bytes:
        """One batch row as a file of this output's format."""
        return encode_png(row)


def parse_file_outputs(raw: object, outputs: Mapping[str, TensorInfo], source: str) -> dict[str, FileOutput]:
    """The `file_outputs` of a serving.json, checked against the model's outputs.

    Raises ValueError naming `source` and the output when the declaration is wrong.
    """
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f'{source}: file_outputs must be an object of output name -> {{"format": "png"}}')
    found: dict[str, FileOutput] = {}
    for name, options in raw.items():
        where = f"{source}: file_outputs.{name}"
        spec = outputs.get(name)
        if spec is None:
            raise ValueError(f"{where}: the model has no such output (outputs: {', '.join(outputs)})")
        file_format = options.get("format") if isinstance(options, dict) else None
        if file_format not in CONTENT_TYPES:
            raise ValueError(f"{where}: format must be one of {sorted(CONTENT_TYPES)}, got {file_format!r}")
        shape = spec.shape
        image_shaped = len(shape) == 3 or (len(shape) == 4 and shape[3] in _CHANNELS)
        if not image_shaped or not (spec.dtype.kind == "f" or spec.dtype == np.uint8):
            raise ValueError(
                f"{where}: a {file_format} output must be uint8 or float shaped [-1, H, W] or "
                f"[-1, H, W, 1|3|4]; this one is {spec.describe()}"
            )
        found[name] = FileOutput(name, file_format)
    return found


def encode_png(row: np.ndarray) -> bytes:
    """An HxW, HxWx1, HxWx3 or HxWx4 image (uint8, or float in [0, 1]) as PNG bytes."""
    pixels = row[:, :, 0] if row.ndim == 3 and row.shape[2] == 1 else row
    if pixels.dtype != np.uint8:
        scaled = np.clip(np.nan_to_num(pixels.astype(np.float32)), 0.0, 1.0) * 255.0
        pixels = np.rint(scaled).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(out, format="PNG")
    return out.getvalue()
