"""Text and JSON renderings used by the command line."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from google.protobuf.json_format import MessageToJson

from client.results import PredictResult
from serving.v1 import model_pb2, predict_pb2, tensor_pb2
from wire.codec import dtype_name, from_numpy

MODEL_COLUMNS = ("NAME", "VERSION", "INPUTS", "OUTPUTS", "LABELS", "STATE")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=False)).rstrip()
        for line in (header, *rows)
    ]
    return "\n".join(lines)


def spec_text(spec: tensor_pb2.TensorSpec) -> str:
    """`image:FLOAT32[-1,28,28,1]`."""
    return f"{spec.name}:{dtype_name(spec.dtype)}[{','.join(str(d) for d in spec.shape)}]"


def state_name(state: int) -> str:
    """`MODEL_STATE_READY` -> `READY`."""
    return model_pb2.ModelState.Name(state).removeprefix("MODEL_STATE_")


def models_table(models: Sequence[model_pb2.ModelMetadata]) -> str:
    """One line per model: name, version, inputs, outputs, label count and state."""
    rows = [
        (
            m.name,
            str(m.version),
            " ".join(spec_text(s) for s in m.inputs),
            " ".join(spec_text(s) for s in m.outputs),
            str(len(m.labels)),
            state_name(m.state),
        )
        for m in models
    ]
    return table(MODEL_COLUMNS, rows) if rows else "no models loaded"


def prediction_text(result: PredictResult, row_names: Sequence[str]) -> str:
    """Per row: its name, best label and confidence, then the top classes.

    Rows of models without labels show their output values (and file URLs) instead.
    """
    lines = []
    for i, name in enumerate(row_names):
        if i < len(result.classifications) and result.classifications[i]:
            classes = result.classifications[i]
            lines.append(f"{name}: {classes[0].label} (confidence {classes[0].score:.4f})")
            lines.extend(f"  {rank}. {c.label:<12} {c.score:.4f}" for rank, c in enumerate(classes, 1))
        else:
            lines.append(f"{name}:")
            lines.extend(
                f"  {output}: {_values_text(values[i])}"
                for output, values in result.outputs.items()
                if values.ndim and values.shape[0] == len(row_names)
            )
            lines.extend(
                f"  {output}: {refs.files[i].presigned_url or refs.files[i].url}"
                for output, refs in sorted(result.response.files.items() if result.response else ())
                if i < len(refs.files)
            )
    return "\n".join(lines)


def response_json(result: PredictResult) -> str:
    """The response as protobuf JSON, with output tensors in readable typed fields."""
    response = predict_pb2.PredictResponse()
    if result.response is not None:
        response.CopyFrom(result.response)
    for name, values in result.outputs.items():
        response.outputs[name].CopyFrom(from_numpy(values, raw=False))
    return MessageToJson(response)


def _values_text(values: np.ndarray) -> str:
    """A compact one-line rendering of an array."""
    text = np.array2string(values, precision=4, threshold=20, separator=", ")
    return " ".join(text.split())
