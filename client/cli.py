"""The command line: `python -m client [--target HOST:PORT] COMMAND ...`.

Commands: `models`, `model NAME`, `load NAME`, `unload NAME`, `predict`, `health`, `bench` and
`upload FILE`. Errors are
printed as `error: CODE: message` and exit with status 1 (130 on Ctrl-C).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from google.protobuf.json_format import MessageToJson

from client.bench import DEFAULT_TIMEOUT, run_bench
from client.channel import DEFAULT_TARGET
from client.errors import ClientError
from client.formatting import models_table, prediction_text, response_json
from client.library import Client
from client.messages import Version
from client.results import PredictResult
from serving.v1 import model_pb2, predict_pb2
from wire.codec import NUMPY_DTYPES


def input_file(value: str) -> tuple[str, Path]:
    """Parse `--input name=file.npy`."""
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE.npy, got {value!r}")
    return name, Path(path)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; global options may come before or after the command."""
    parser = argparse.ArgumentParser(prog="python -m client", description="Client of the model serving backend.")
    _add_global_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = _command(commands, "models", "list the loaded models", _models)
    models.add_argument("--json", action="store_true", help="print protobuf JSON")

    model = _command(commands, "model", "print one model's metadata as JSON", _model)
    model.add_argument("name")
    model.add_argument("--version", type=version_arg, default=0, help=VERSION_HELP)

    load = _command(commands, "load", "load a model of the server's model directory (model control)", _load)
    load.add_argument("name")
    unload = _command(commands, "unload", "stop serving every version of a model (model control)", _unload)
    unload.add_argument("name")

    predict = _command(commands, "predict", "run a model on images or arrays", _predict)
    predict.add_argument("--model", required=True)
    predict.add_argument("--version", type=version_arg, default=0, help=VERSION_HELP)
    predict.add_argument("--image", type=Path, action="append", default=[], help="image file, one row each")
    predict.add_argument("--image-input", help="input taking the images (default: metadata)")
    predict.add_argument(
        "--input",
        type=input_file,
        action="append",
        default=[],
        metavar="NAME=FILE.npy",
        help="array for an input (repeatable)",
    )
    predict.add_argument("--data", help='JSON {"input": nested lists}, or @file.json')
    predict.add_argument("--output", action="append", default=[], help="output to return")
    predict.add_argument("--top-k", type=int, default=0, help="classes per row (0: default)")
    predict.add_argument("--request-id", help="sent as request_id and x-request-id")
    predict.add_argument("--json", action="store_true", help="print the response as JSON")

    health = _command(commands, "health", "check grpc.health.v1 (exit 0 if SERVING)", _health)
    health.add_argument("--service", default="", help="service name ('' is the whole server)")

    upload = _command(commands, "upload", "stream a file to the server's object storage", _upload)
    upload.add_argument("file", type=Path)
    upload.add_argument("--name", help="file name to store (default: the file's own)")
    upload.add_argument("--content-type", default="", help="default: guessed from the name")
    upload.add_argument("--key-prefix", default="", help="extra key prefix under the server's")
    upload.add_argument("--task-id", default="", help="attach the file to this task")
    upload.add_argument("--checksum", action="store_true", help="send the file's SHA-256 for the server to check")

    bench = _command(commands, "bench", "load-test Predict or StreamPredict", _bench)
    bench.add_argument("--model", default="digits")
    bench.add_argument("--version", type=version_arg, default=0, help=VERSION_HELP)
    bench.add_argument("--mode", choices=("unary", "stream"), default="unary")
    bench.add_argument("--concurrency", type=int, default=1, help="workers, one closed loop each")
    bench.add_argument("--channels", type=int, default=1, help="channels the workers share")
    bench.add_argument("--duration", type=float, help="seconds measured (10 without --count)")
    bench.add_argument("--count", type=int, help="requests measured")
    bench.add_argument("--rows", type=int, default=1, help="batch rows per request")
    bench.add_argument("--warmup", type=float, default=1.0, help="seconds not measured")
    bench.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except (ClientError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _add_global_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """Connection options; on a command they override only what was given before it."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    target = os.environ.get("SERVING_TARGET", DEFAULT_TARGET)
    parser.add_argument("--target", default=default(target), help=f"server address (env SERVING_TARGET: {target})")
    parser.add_argument(
        "--api-key",
        default=default(os.environ.get("SERVING_API_KEY")),
        help="sent as 'authorization: Bearer KEY' (env SERVING_API_KEY)",
    )
    parser.add_argument("--timeout", type=float, default=default(None), help="deadline, seconds")
    parser.add_argument("--tls", action="store_true", default=default(False), help="use TLS")
    parser.add_argument(
        "--root-certificates",
        type=Path,
        default=default(None),
        metavar="PEM",
        help="trusted root certificates (implies --tls)",
    )
    parser.add_argument(
        "--client-cert",
        type=Path,
        default=default(None),
        metavar="PEM",
        help="client certificate chain, for servers requiring client certificates (with --client-key)",
    )
    parser.add_argument("--client-key", type=Path, default=default(None), metavar="PEM", help="client private key")


VERSION_HELP = "a version number (0: the newest loaded) or a version label such as canary"


def version_arg(text: str) -> Version:
    """--version: a number, or a label of the model's serving.json "version_labels"."""
    return int(text) if text.isascii() and text.isdigit() else text


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    description: str,
    handler: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    """Add a command that runs `handler(args)`."""
    parser = commands.add_parser(name, help=description, description=description)
    _add_global_options(parser, defaults=False)
    parser.set_defaults(handler=handler)
    return parser


def _client(args: argparse.Namespace) -> Client:
    """A client for the global options."""
    return Client(
        args.target,
        api_key=args.api_key,
        timeout=args.timeout,
        tls=args.tls,
        root_certificates=_root_certificates(args),
        certificate_chain=args.client_cert.read_bytes() if args.client_cert else None,
        private_key=args.client_key.read_bytes() if args.client_key else None,
    )


def _root_certificates(args: argparse.Namespace) -> bytes | None:
    """The PEM bytes of `--root-certificates`, if given."""
    return args.root_certificates.read_bytes() if args.root_certificates else None


def _models(args: argparse.Namespace) -> int:
    """`models`: a table of the loaded models, or their JSON."""
    with _client(args) as client:
        models = client.list_models()
    if args.json:
        print(MessageToJson(predict_pb2.ListModelsResponse(models=models)))
    else:
        print(models_table(models))
    return 0


def _model(args: argparse.Namespace) -> int:
    """`model NAME`: one model's metadata as JSON."""
    with _client(args) as client:
        print(MessageToJson(client.get_model(args.name, args.version)))
    return 0


def _load(args: argparse.Namespace) -> int:
    """`load NAME`: the versions now served, as the models table."""
    with _client(args) as client:
        print(models_table(client.load_model(args.name)))
    return 0


def _unload(args: argparse.Namespace) -> int:
    """`unload NAME`: which versions stopped serving."""
    with _client(args) as client:
        versions = client.unload_model(args.name)
    print(f"unloaded {args.name} version{'s' if len(versions) > 1 else ''} {', '.join(map(str, versions))}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    """`predict`: images, .npy files or JSON data in, classes or outputs out."""
    if args.image and (args.input or args.data):
        raise ValueError("give either --image or --input/--data, not both")
    if not (args.image or args.input or args.data):
        raise ValueError("give --image, --input or --data")
    options = {
        "version": args.version,
        "outputs": args.output,
        "top_k": args.top_k,
        "request_id": args.request_id,
    }
    with _client(args) as client:
        if args.image:
            result = client.predict_image(args.model, args.image, input=args.image_input, **options)
            row_names = [path.name for path in args.image]
        else:
            arrays = {name: np.load(path, allow_pickle=False) for name, path in args.input}
            if args.data:
                metadata = client.get_model(args.model, args.version)
                arrays |= json_arrays(_read_json(args.data), metadata)
            result = client.predict(args.model, arrays, **options)
            row_names = [f"row {i}" for i in range(_batch_size(result, arrays))]
    print(response_json(result) if args.json else prediction_text(result, row_names))
    return 0


def _health(args: argparse.Namespace) -> int:
    """`health`: print the serving status; exit 0 only when SERVING."""
    with _client(args) as client:
        status = client.health(args.service)
    print(status)
    return 0 if status == "SERVING" else 1


def _upload(args: argparse.Namespace) -> int:
    """`upload FILE`: stream it and print where it was stored, as JSON."""
    sha256 = ""
    if args.checksum:
        with args.file.open("rb") as file:
            sha256 = hashlib.file_digest(file, "sha256").hexdigest()
    with _client(args) as client:
        response = client.upload(
            args.file,
            file_name=args.name,
            content_type=args.content_type,
            key_prefix=args.key_prefix,
            task_id=args.task_id,
            sha256=sha256,
        )
    print(MessageToJson(response))
    return 0


def _bench(args: argparse.Namespace) -> int:
    """`bench`: run the load generator and print its report."""
    result = run_bench(
        args.target,
        model=args.model,
        version=args.version,
        mode=args.mode,
        concurrency=args.concurrency,
        channels=args.channels,
        duration=args.duration,
        count=args.count,
        rows=args.rows,
        warmup=args.warmup,
        timeout=args.timeout or DEFAULT_TIMEOUT,
        api_key=args.api_key,
        tls=args.tls,
        root_certificates=_root_certificates(args),
    )
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.format())
    return 0


def json_arrays(data: Mapping[str, object], metadata: model_pb2.ModelMetadata) -> dict[str, np.ndarray]:
    """Arrays from nested lists by input name, in the dtypes the model's inputs declare."""
    specs = {spec.name: spec for spec in metadata.inputs}
    unknown = sorted(set(data) - set(specs))
    if unknown:
        raise ValueError(f"model '{metadata.name}' has no input {unknown[0]!r}; inputs: {', '.join(specs)}")
    return {name: np.asarray(values, dtype=NUMPY_DTYPES[specs[name].dtype]) for name, values in data.items()}


def _read_json(value: str) -> Mapping[str, object]:
    """`--data`: inline JSON, or `@path` to read it from a file."""
    text = Path(value[1:]).read_text() if value.startswith("@") else value
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError('--data must be a JSON object: {"input name": nested lists}')
    return data


def _batch_size(result: PredictResult, arrays: Mapping[str, np.ndarray]) -> int:
    """Rows in the request: the first dimension of its inputs."""
    rows = (int(array.shape[0]) for array in arrays.values() if array.ndim)
    return max(rows, default=len(result.classifications))
