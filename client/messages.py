"""Building request messages from numpy arrays and encoded images."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from serving.v1 import model_pb2, predict_pb2, stream_pb2, tensor_pb2
from wire.codec import from_numpy

ImageSource = bytes | str | os.PathLike
"""Encoded image bytes, or the path of an image file."""

Version = int | str
"""A model version number (0: the newest served), or a version label such as "canary"."""


def version_fields(version: Version) -> dict[str, Any]:
    """`version` or `version_label` of a request message."""
    return {"version_label": version} if isinstance(version, str) else {"version": version}


def tensor_inputs(arrays: Mapping[str, np.ndarray]) -> dict[str, tensor_pb2.Input]:
    """Encode arrays as raw little-endian tensors, by input name."""
    return {name: tensor_pb2.Input(tensor=from_numpy(array, raw=True)) for name, array in arrays.items()}


def image_input(images: ImageSource | Sequence[ImageSource]) -> tensor_pb2.Input:
    """One input made of encoded images; paths are read from disk."""
    return tensor_pb2.Input(images=tensor_pb2.ImageBatch(images=read_images(images)))


def read_images(images: ImageSource | Sequence[ImageSource]) -> list[bytes]:
    """The bytes of each image: bytes are kept, paths are read."""
    if isinstance(images, (bytes, str, os.PathLike)):
        images = [images]
    return [image if isinstance(image, bytes) else Path(image).read_bytes() for image in images]


def predict_request(
    model: str,
    inputs: Mapping[str, tensor_pb2.Input],
    *,
    version: Version = 0,
    outputs: Iterable[str] | None = None,
    top_k: int = 0,
    request_id: str | None = None,
    record_task: bool = False,
) -> predict_pb2.PredictRequest:
    """A `PredictRequest` asking for raw output tensors."""
    return predict_pb2.PredictRequest(
        model=model,
        **version_fields(version),
        inputs=dict(inputs),
        output_filter=list(outputs or ()),
        top_k=top_k,
        request_id=request_id or "",
        output_encoding=predict_pb2.TENSOR_ENCODING_RAW,
        record_task=record_task,
    )


def stream_requests(
    model: str,
    batches: Iterable[Mapping[str, np.ndarray]],
    *,
    version: Version,
    outputs: Sequence[str],
    top_k: int,
    request_ids: Sequence[str],
) -> Iterator[stream_pb2.StreamPredictRequest]:
    """One stream message per batch; message `i` is `request_ids[i]`, else `str(i)`."""
    for i, batch in enumerate(batches):
        request = predict_request(
            model,
            tensor_inputs(batch),
            version=version,
            outputs=outputs,
            top_k=top_k,
            request_id=request_ids[i] if i < len(request_ids) else str(i),
        )
        yield stream_pb2.StreamPredictRequest(request=request)


def image_input_name(metadata: model_pb2.ModelMetadata) -> str:
    """The input that takes images: the first `image_inputs` entry, else the only input."""
    if metadata.image_inputs:
        return metadata.image_inputs[0]
    if len(metadata.inputs) == 1:
        return metadata.inputs[0].name
    names = ", ".join(spec.name for spec in metadata.inputs)
    raise ValueError(f"model '{metadata.name}' has several inputs ({names}) and none takes images; name the input")
