"""The one typed settings object.

Values come from, highest priority first: command-line flags, environment
variables, the file given with `--config` (KEY=VALUE lines, like `.env`), a
`.env` file in the working directory, and the defaults below. `Settings` is
built once in `server.app` and passed down; nothing reads the environment
elsewhere.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1024 * 1024
DEFAULT_POLL_SECONDS = 10.0  # MODEL_CONTROL_MODE=poll without MODEL_POLL_SECONDS


class Settings(BaseSettings):
    """Every setting of the server; environment variable = field name in capitals."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    # Listening
    grpc_server_address: str = Field("0.0.0.0:50051", description="gRPC listen address (--port replaces the port)")
    grpc_max_workers: int = Field(128, ge=1, description="threads for RPCs whose work blocks (tasks, uploads, streams)")
    max_message_bytes: int = Field(
        64 * MiB, ge=1024, description="largest request or response message (gRPC's own default is 4 MB)"
    )
    grace_period_seconds: float = Field(10.0, ge=0, description="drain time on SIGTERM")
    server_processes: int = Field(
        1,
        ge=1,
        le=256,
        description="server processes sharing the ports (SO_REUSEPORT), each with its own event loop and models",
    )
    server_process_index: int = Field(-1, ge=-1, description="set by the parent of SERVER_PROCESSES > 1; -1: alone")
    reflection: bool = Field(True, description="serve gRPC server reflection")
    tfserving_grpc: bool = Field(
        True, description="also serve TensorFlow Serving's gRPC PredictionService and ModelService"
    )
    inference_v2: bool = Field(
        True,
        description="also serve the Open Inference Protocol (KServe V2, Triton): gRPC, and REST under /v2 on the shim",
    )

    # Models
    model_dir: Path = Field(Path("./models"), description="the model repository: <name>/<version>/ folders")
    model_poll_seconds: float = Field(0.0, ge=0, description="look for new model versions this often; 0: never")
    model_control_mode: Literal["none", "poll", "explicit"] | None = Field(
        None,
        description="none: serve the models found at start; poll: also follow MODEL_DIR every MODEL_POLL_SECONDS "
        "(10 when unset); explicit: load and unload models by API only (LoadModel, UnloadModel, Triton's "
        "repository load/unload). Unset: poll when MODEL_POLL_SECONDS > 0, else none",
    )
    startup_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="with MODEL_CONTROL_MODE=explicit: models to load at start, comma-separated; * loads all",
    )
    model_load_strict: bool = Field(
        False, description="a model that fails to load at start-up stops the start (else the others serve)"
    )
    default_top_k: int = Field(3, ge=0, description="classes per row when a request asks for top_k 0")
    tf_intra_op_threads: int = Field(0, ge=0, description="0: TensorFlow's default")
    tf_inter_op_threads: int = Field(0, ge=0, description="0: TensorFlow's default")

    # Batching (defaults for every model; models/<name>/serving.json overrides them)
    max_batch_size: int = Field(512, ge=1, description="rows per model call; larger requests are refused")
    max_batch_delay_ms: float = Field(
        0.0, ge=0, description="hold a batch open this long for more requests; 0: never wait"
    )
    allowed_batch_sizes: Annotated[list[int], NoDecode] = Field(
        default_factory=list,
        description="pad batches to these sizes, e.g. 8,32,128,512 (the largest is MAX_BATCH_SIZE); empty: none",
    )
    max_queue_size: int = Field(1024, ge=1, description="queued requests per model")

    # Used by later parts of the server; named here so every setting has one home.
    http_server_address: str = Field("0.0.0.0:8080", description="HTTP/JSON shim listen address; empty: no shim")
    http_max_workers: int = Field(128, ge=1, description="threads running HTTP shim calls")
    max_http_body_bytes: int = Field(0, ge=0, description="largest HTTP body or NDJSON line; 0: MAX_MESSAGE_BYTES")
    tfserving_rest_address: str = Field(
        "", description="TensorFlow Serving's REST API here (e.g. 0.0.0.0:8501); empty: off"
    )
    redis_address: str = Field(
        "", description="host:port, redis://[:password@]host:port[/db] or rediss://; empty: tasks in memory"
    )
    redis_cluster_mode: bool = Field(False, description="REDIS_ADDRESS is a node of a Redis Cluster")
    redis_tls_ca_file: Path | None = Field(None, description="CA certificates (PEM) for a rediss:// address")
    redis_key_duration: float = Field(12 * 3600.0, gt=0, description="seconds; also 90s, 15m, 12h, 1d")
    redis_timeout_seconds: float = Field(
        2.0, ge=1.0, description="longest wait for a Redis connect or answer; a hung Redis is UNAVAILABLE after it"
    )
    aws_region: str = Field("", description="S3 region; empty: boto3's own default")
    aws_bucket: str = Field("", description="S3 bucket of the object store; empty: the local folder UPLOAD_DIR")
    aws_s3_use_accelerate: bool = Field(
        False, description="use the S3 Transfer Acceleration endpoint (not with S3_ENDPOINT_URL)"
    )
    s3_endpoint_url: str = Field(
        "", description="an S3-compatible endpoint (MinIO, GCS, R2), path-style addressing; empty: AWS"
    )

    # Object storage (server/storage): S3 when AWS_BUCKET is set, else UPLOAD_DIR.
    # Credentials come from boto3's own chain (AWS_ACCESS_KEY_ID, ~/.aws, roles).
    s3_key_prefix: str = Field("", description="prefix of every generated object key")
    s3_max_attempts: int = Field(3, ge=1, description="attempts per S3 call (standard retry mode)")
    s3_connect_timeout_seconds: float = Field(2.0, gt=0, description="longest wait for a connection to S3")
    s3_read_timeout_seconds: float = Field(
        5.0, gt=0, description="longest wait for S3 to answer; a hung store fails a call after S3_MAX_ATTEMPTS of these"
    )
    upload_dir: Path = Field(Path("./data/uploads"), description="local object store without AWS_BUCKET")
    upload_fsync: bool = Field(False, description="fsync local objects before they become visible")
    upload_part_size: int = Field(8 * MiB, ge=5 * MiB, description="S3 multipart part size")
    max_upload_bytes: int = Field(5 * 1024 * MiB, ge=1, description="largest object accepted")
    presign_expiry_seconds: int = Field(0, ge=0, le=7 * 24 * 3600, description="0: no presigned URLs")
    public_base_url: str = Field("", description="prefix of local file URLs (/files/<key>)")

    # Tasks and async predictions (server/tasks)
    task_workers: int = Field(2, ge=0, description="queue worker threads per process; 0: none")
    task_visibility_timeout: float = Field(30.0, gt=0, description="seconds before another worker claims an entry")
    task_max_time_in_queue_seconds: int = Field(0, ge=0, description="default queue limit; 0: none")
    record_predictions: bool = Field(False, description="record every Predict as a task")
    webhook_secret: str = Field("", description="HMAC key of the X-Signature-SHA256 header; empty: no signature")
    webhook_max_attempts: int = Field(5, ge=1, description="attempts per webhook")
    webhook_timeout_seconds: float = Field(10.0, gt=0, description="timeout of one webhook attempt")
    webhook_allow_private: bool = Field(False, description="allow private, loopback and link-local webhook targets")
    webhook_workers: int = Field(4, ge=1, description="threads delivering webhooks")

    # Security (server/telemetry): API keys, rate limit, TLS
    api_keys: SecretStr = Field(SecretStr(""), description="name:key pairs, comma-separated")
    api_keys_file: Path | None = Field(None, description="lines name:key or name:sha256:<hex>")
    auth_exempt_reflection: bool = Field(True, description="serve reflection without an API key")
    rate_limit_per_second: float = Field(0.0, ge=0, description="per API key; 0: no limit")
    rate_limit_burst: int = Field(0, ge=0, description="0: one second's worth (at least 1)")
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate chain: TLS on the gRPC port and the HTTP listeners"
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of TLS_CERT_FILE")
    tls_client_ca_file: Path | None = Field(None, description="require client certificates (mTLS)")
    health_server_address: str = Field("", description="plaintext port serving only grpc.health.v1")

    # Telemetry (server/telemetry): access log, metrics, tracing
    access_log_path: str = Field("logs/access.log", description="empty: no access log")
    access_log_max_bytes: int = Field(100 * MiB, ge=1024, description="rotate the access log at this size")
    access_log_backup_count: int = Field(5, ge=0, description="rotated access log files kept")
    metrics_address: str = Field("0.0.0.0:9090", description="metrics port without the HTTP shim; empty: none")
    otel_service_name: str = Field("tf-grpc-serving", description="service name of the spans")
    otel_exporter_otlp_endpoint: str = Field("", description="OTLP/gRPC collector; empty: spans are not exported")
    # Server spans cost about 0.2 ms of GIL time per call, so they are made only
    # when they go somewhere: None = on exactly when an OTLP endpoint is set.
    tracing_enabled: bool | None = Field(
        None, description="make server spans; unset: on exactly when OTEL_EXPORTER_OTLP_ENDPOINT is set"
    )

    log_level: str = Field("INFO", description="level of the server's log: DEBUG, INFO, WARNING, ERROR")

    @field_validator("redis_key_duration", "task_visibility_timeout", mode="before")
    @classmethod
    def _parse_duration(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator(
        "api_keys_file", "tls_cert_file", "tls_key_file", "tls_client_ca_file", "redis_tls_ca_file", mode="before"
    )
    @classmethod
    def _empty_path_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("startup_models", mode="before")
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        return [v for v in value.replace(" ", "").split(",") if v] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _resolve_model_control(self) -> Settings:
        if self.model_control_mode is None:
            self.model_control_mode = "poll" if self.model_poll_seconds > 0 else "none"
        if self.model_control_mode == "poll" and self.model_poll_seconds == 0:
            self.model_poll_seconds = DEFAULT_POLL_SECONDS
        if self.model_poll_seconds > 0 and self.model_control_mode != "poll":
            raise ValueError(
                f"model_poll_seconds is for model_control_mode=poll; {self.model_control_mode} does not poll MODEL_DIR"
            )
        if self.startup_models and self.model_control_mode != "explicit":
            raise ValueError("startup_models is for model_control_mode=explicit; in the other modes every model loads")
        return self

    @field_validator("allowed_batch_sizes", mode="before")
    @classmethod
    def _split_sizes(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [int(v) for v in value.replace(" ", "").split(",") if v]
        return value

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file needs tls_cert_file and tls_key_file")
        return self

    @model_validator(mode="after")
    def _check_batching(self) -> Settings:
        sizes = self.allowed_batch_sizes
        if sizes:
            if sizes != sorted(set(sizes)) or sizes[0] < 1:
                raise ValueError("allowed_batch_sizes must be increasing positive integers")
            if sizes[-1] != self.max_batch_size:
                raise ValueError(
                    f"the largest allowed_batch_sizes ({sizes[-1]}) must equal max_batch_size ({self.max_batch_size})"
                )
        return self


DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in `90s`, `15m`, `12h`, `1d`, `250ms` or a bare number of seconds."""
    value = text.strip().lower()
    unit = next((u for u in sorted(DURATION_UNITS, key=len, reverse=True) if value.endswith(u)), "")
    number = value[: len(value) - len(unit)] if unit else value
    try:
        return float(number) * DURATION_UNITS.get(unit, 1.0)
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (expected e.g. 90s, 15m, 12h, 1d)") from None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line flags of `python -m server [worker]`."""
    parser = argparse.ArgumentParser(prog="python -m server", description=__doc__.split("\n")[0])
    parser.add_argument(
        "mode",
        nargs="?",
        default="serve",
        choices=["serve", "worker"],
        help="serve: the API; worker: only queue workers (plus gRPC health)",
    )
    parser.add_argument("--config", type=Path, help="KEY=VALUE settings file (like .env)")
    parser.add_argument("--port", type=int, help="gRPC port (host from GRPC_SERVER_ADDRESS)")
    parser.add_argument("--model-dir", type=Path, help="model repository (MODEL_DIR)")
    parser.add_argument("--max-batch-size", type=int)
    parser.add_argument("--max-batch-delay-ms", type=float)
    parser.add_argument("--log-level")
    parser.add_argument("--processes", type=int, help="server processes sharing the ports (SERVER_PROCESSES)")
    return parser.parse_args(argv)


def load_settings(args: argparse.Namespace | None = None, **overrides: Any) -> Settings:
    """Build the settings from flags, environment, `--config` file and `.env`."""
    args = args or parse_args([])
    if args.config is not None and not args.config.is_file():
        raise SystemExit(f"--config: no such file: {args.config}")
    env_files = (".env", str(args.config)) if args.config else (".env",)
    flags = {
        "model_dir": args.model_dir,
        "max_batch_size": args.max_batch_size,
        "max_batch_delay_ms": args.max_batch_delay_ms,
        "log_level": args.log_level,
        "server_processes": getattr(args, "processes", None),
    }
    values = {k: v for k, v in flags.items() if v is not None} | overrides
    settings = Settings(_env_file=env_files, **values)
    if args.port is not None:
        host = settings.grpc_server_address.rsplit(":", 1)[0]
        settings = settings.model_copy(update={"grpc_server_address": f"{host}:{args.port}"})
    return settings
