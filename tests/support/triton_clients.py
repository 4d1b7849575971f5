"""Triton's own Python clients (tritonclient.grpc and tritonclient.http) against a running server.

    python -m tests.support.triton_clients infer GRPC_TARGET HTTP_HOST:PORT ROWS.npy DIGITS.npy
    python -m tests.support.triton_clients load-unload|config|stats GRPC_TARGET HTTP_HOST:PORT MODEL

Run as a separate process, as a client is: tritonclient's generated messages
define the same `inference.*` protobuf names as the server's stubs, and one
process's descriptor pool cannot hold both. Prints one JSON object with what
each client saw, for the tests to check (`tests.support.triton.run` runs it).
"""

from __future__ import annotations

import json
import queue
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def failure(call: Any) -> dict[str, Any]:
    try:
        call()
    except InferenceServerException as exc:
        return {"status": exc.status(), "message": exc.message()}
    return {"status": "no error"}


def with_grpc(target: str, rows: np.ndarray, digits: np.ndarray) -> dict[str, Any]:
    client = grpcclient.InferenceServerClient(target)
    image = grpcclient.InferInput("image", list(rows.shape), "FP32")
    image.set_data_from_numpy(rows)
    result = client.infer("digits", [image], request_id="triton-grpc-1")
    top = client.infer("digits", [image], outputs=[grpcclient.InferRequestedOutput("probabilities", class_count=2)])
    digit = grpcclient.InferInput("digit", list(digits.shape), "INT32")
    digit.set_data_from_numpy(digits)
    decoded = client.infer("digits_decoder", [digit], model_version="1")
    wrong = grpcclient.InferInput("image", list(rows.shape), "FP64")
    wrong.set_data_from_numpy(rows.astype(np.float64))
    metadata = client.get_model_metadata("digits", as_json=True)
    return {
        "stream": streamed(client, image),
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready("digits"),
        "unknown_model_ready": client.is_model_ready("nope"),
        "index": client.get_model_repository_index(as_json=True),
        "server": client.get_server_metadata(as_json=True),
        "metadata": metadata,
        "id": result.get_response().id,
        "probabilities": result.as_numpy("probabilities").tolist(),
        "top": [[v.decode() for v in row] for row in top.as_numpy("probabilities").tolist()],
        "decoded": decoded.as_numpy("image").tolist(),
        "wrong_datatype": failure(lambda: client.infer("digits", [wrong])),
        "unknown_model": failure(lambda: client.infer("nope", [image])),
    }


def streamed(client: grpcclient.InferenceServerClient, image: grpcclient.InferInput) -> dict[str, Any]:
    """ModelStreamInfer through the client's stream API: three good requests and one for an unknown model."""
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    for index in range(3):
        client.async_stream_infer("digits", [image], request_id=f"stream-{index}")
    client.async_stream_infer("nope", [image], request_id="stream-bad")
    got = [answers.get(timeout=30) for _ in range(4)]
    client.stop_stream()
    seen: dict[str, Any] = {}
    for result, error in got:
        if error is not None:
            seen["error"] = error.message()
        else:
            seen[result.get_response().id] = result.as_numpy("probabilities").tolist()
    return seen


def with_http(url: str, rows: np.ndarray, digits: np.ndarray) -> dict[str, Any]:
    client = httpclient.InferenceServerClient(url)
    results: dict[str, Any] = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready("digits"),
        "metadata": client.get_model_metadata("digits"),
        "index": client.get_model_repository_index(),
    }
    for binary in (True, False):  # binary tensor data (the client's default) and JSON
        image = httpclient.InferInput("image", list(rows.shape), "FP32")
        image.set_data_from_numpy(rows, binary_data=binary)
        outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=binary)]
        result = client.infer("digits", [image], outputs=outputs, request_id=f"triton-http-{binary}")
        results[f"binary={binary}"] = {
            "id": result.get_response()["id"],
            "probabilities": result.as_numpy("probabilities").tolist(),
        }
    digit = httpclient.InferInput("digit", list(digits.shape), "INT32")
    digit.set_data_from_numpy(digits)
    results["decoded"] = client.infer("digits_decoder", [digit]).as_numpy("image").tolist()
    top = client.infer("digits", [image], outputs=[httpclient.InferRequestedOutput("probabilities", class_count=2)])
    results["top"] = [[v.decode() for v in row] for row in top.as_numpy("probabilities").tolist()]
    wrong = httpclient.InferInput("image", list(rows.shape), "FP64")
    wrong.set_data_from_numpy(rows.astype(np.float64))
    results["wrong_datatype"] = failure(lambda: client.infer("digits", [wrong]))
    results["unknown_model"] = failure(lambda: client.infer("nope", [image]))
    client.close()
    return results


def load_unload(client: Any, model: str) -> list[bool]:
    before = client.is_model_ready(model)
    client.load_model(model)
    loaded = client.is_model_ready(model)
    client.unload_model(model)
    return [before, loaded, client.is_model_ready(model)]


def main() -> None:
    command, target, http_address, *rest = sys.argv[1:]
    grpc_client, http_client = grpcclient.InferenceServerClient(target), httpclient.InferenceServerClient(http_address)
    if command == "infer":
        rows, digits = np.load(rest[0]), np.load(rest[1])
        seen: dict[str, Any] = {"grpc": with_grpc(target, rows, digits), "http": with_http(http_address, rows, digits)}
    elif command == "load-unload":
        seen = {"grpc": load_unload(grpc_client, rest[0]), "http": load_unload(http_client, rest[0])}
    elif command == "config":
        seen = {
            "grpc": grpc_client.get_model_config(rest[0], as_json=True)["config"],
            "http": http_client.get_model_config(rest[0]),
        }
    elif command == "stats":
        seen = {
            "grpc": grpc_client.get_inference_statistics(rest[0], as_json=True),
            "http": http_client.get_inference_statistics(rest[0]),
        }
    else:
        raise SystemExit(f"unknown command {command!r}")
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
