"""Triton's model configuration (ModelConfig, `GET /v2/models/{model}/config`) of a served model.

What the server serves the model with, in Triton's terms: inputs and outputs
without the batch dimension (`max_batch_size` > 0 says it is there), the
Batcher's settings as `dynamic_batching` (allowed batch sizes as preferred
sizes, the batch delay as the queue delay) and serving.json's version policy.
"""

from __future__ import annotations

from typing import Any

from inference import open_inference_pb2 as pb
from server.models.backend import TensorInfo
from server.models.model import LABELS_FILE, LoadedModel
from server.protocols.inference_v2 import tensors

BACKEND = "tensorflow"  # what runs both formats (Triton names a SavedModel's backend so too)


def config_of(model: LoadedModel, policy: Any) -> pb.ModelConfig:
    """`policy`: the version policy the repository follows for it (serving.json's form)."""
    batching = model.batching
    return pb.ModelConfig(
        name=model.name,
        platform=model.loaded.platform,
        backend=BACKEND,
        version_policy=version_policy_of(policy),
        max_batch_size=batching.max_batch_size,
        input=[pb.ModelInput(name=i.name, data_type=data_type_of(i), dims=i.shape[1:]) for i in model.inputs.values()],
        output=[
            pb.ModelOutput(
                name=o.name,
                data_type=data_type_of(o),
                dims=o.shape[1:],
                label_filename=LABELS_FILE if o.name == model.classification_output else "",
            )
            for o in model.outputs.values()
        ],
        dynamic_batching=pb.ModelDynamicBatching(
            preferred_batch_size=batching.allowed_batch_sizes,
            max_queue_delay_microseconds=round(batching.max_batch_delay_s * 1_000_000),
        ),
    )


def data_type_of(info: TensorInfo) -> str:
    """ "FP32" -> TYPE_FP32; BYTES (strings) -> TYPE_STRING, as Triton's configuration names them."""
    datatype = tensors.datatype_of(info.dtype)
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def version_policy_of(raw: Any) -> pb.ModelVersionPolicy:
    """serving.json's "version_policy" (already checked when the model loaded) in Triton's form."""
    policy = pb.ModelVersionPolicy
    if raw == "all":
        return policy(all=policy.All())
    if isinstance(raw, dict) and "latest" in raw:
        return policy(latest=policy.Latest(num_versions=raw["latest"]))
    if isinstance(raw, dict) and "specific" in raw:
        return policy(specific=policy.Specific(versions=raw["specific"]))
    return policy(latest=policy.Latest(num_versions=1))  # the default, as TF Serving's and Triton's
