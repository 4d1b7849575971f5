"""Reference servers for the serving benchmark, on the same API and model as the server.

    python -m benchmarks.references echo  --port P --model-dir DIR --model NAME
    python -m benchmarks.references plain --port P --model-dir DIR --model NAME

- `echo`: a grpc.aio server that parses each `serving.v1.PredictService/Predict`
  request and answers a fixed response of the real size (computed once with the
  model at start-up). It does no model work: the transport's ceiling.
- `plain`: a threaded grpcio server that decodes the request and calls the
  SavedModel's serving signature once per request in the RPC thread: what a
  user would write without a batching server.

Both print "ready" on stdout once they listen, and stop on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np

import server as _tf_environment  # noqa: F401  (TensorFlow's environment, as the server sets it)
from serving.v1 import model_pb2, predict_pb2
from wire import codec

PREDICT = "/serving.v1.PredictService/Predict"


class PlainModel:
    """The SavedModel's serving signature, called once per request."""

    def __init__(self, model_dir: Path, name: str) -> None:
        import tensorflow as tf

        versions = sorted(int(p.name) for p in (model_dir / name).iterdir() if p.name.isdigit())
        self.version = versions[-1]
        self.tf = tf
        self.signature = tf.saved_model.load(str(model_dir / name / str(self.version))).signatures["serving_default"]
        self.name = name

    def answer(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        inputs = {key: self.tf.constant(codec.to_numpy(value.tensor, key)) for key, value in request.inputs.items()}
        outputs = self.signature(**inputs)
        response = predict_pb2.PredictResponse(
            request_id=request.request_id, model=model_pb2.ModelRef(name=self.name, version=self.version)
        )
        for key, tensor in outputs.items():
            response.outputs[key].CopyFrom(codec.from_numpy(tensor.numpy(), raw=True))
        return response


def _handler(behavior: object) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(
        behavior,  # type: ignore[arg-type]
        request_deserializer=predict_pb2.PredictRequest.FromString,
        response_serializer=predict_pb2.PredictResponse.SerializeToString,
    )


def serve_plain(port: int, model: PlainModel, threads: int) -> None:
    def predict(request: predict_pb2.PredictRequest, context: grpc.ServicerContext) -> predict_pb2.PredictResponse:
        return model.answer(request)

    server = grpc.server(ThreadPoolExecutor(max_workers=threads))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "serving.v1.PredictService",
                {
                    "Predict": _handler(predict),
                },
            ),
        )
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    server.stop(1).wait()


async def serve_echo(port: int, response: predict_pb2.PredictResponse) -> None:
    fixed = response.SerializeToString()

    async def predict(request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext) -> bytes:
        return fixed  # parsed request in, the real-sized answer out

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "serving.v1.PredictService",
                {
                    "Predict": grpc.unary_unary_rpc_method_handler(
                        predict, request_deserializer=predict_pb2.PredictRequest.FromString, response_serializer=None
                    ),
                },
            ),
        )
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await server.stop(1)


def sample_request(model: PlainModel, shape: list[int]) -> predict_pb2.PredictRequest:
    x = np.random.default_rng(0).random([1, *shape], dtype=np.float32)
    request = predict_pb2.PredictRequest(model=model.name)
    key = next(iter(model.signature.structured_input_signature[1]))
    request.inputs[key].tensor.CopyFrom(codec.from_numpy(x, raw=True))
    return request


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=("echo", "plain"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument(
        "--shape", type=lambda s: [int(d) for d in s.split(",")], required=True, help="one row's shape, e.g. 8,8,1"
    )
    parser.add_argument("--threads", type=int, default=16, help="RPC threads of the plain server")
    args = parser.parse_args(argv)
    model = PlainModel(args.model_dir, args.model)
    if args.kind == "plain":
        serve_plain(args.port, model, args.threads)
    else:
        asyncio.run(serve_echo(args.port, model.answer(sample_request(model, args.shape))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
