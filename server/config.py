"""The one typed settings object.

Values come from, highest priority first: command-line flags, environment
variables, the file given with `--config` (KEY=VALUE lines, like `.env`), a
`.env` file in the working directory, and the defaults below. `Settings` is
built once in `server.app` and passed down; nothing reads the environment
elsewhere.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Annotated, Any, Sequence

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1024 * 1024


class Settings(BaseSettings):
    """Every setting of the server; environment variable = field name in capitals."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    # Listening
    grpc_server_address: str = "0.0.0.0:50051"
    grpc_max_workers: int = Field(128, ge=1, description="threads serving RPCs")
    max_message_bytes: int = Field(64 * MiB, ge=1024)
    grace_period_seconds: float = Field(10.0, ge=0, description="drain time on SIGTERM")
    reflection: bool = True

    # Models
    model_dir: Path = Path("./models")
    default_top_k: int = Field(3, ge=0)
    tf_intra_op_threads: int = Field(0, ge=0, description="0: TensorFlow's default")
    tf_inter_op_threads: int = Field(0, ge=0, description="0: TensorFlow's default")

    # Batching (defaults for every model; models/<name>/serving.json overrides them)
    max_batch_size: int = Field(512, ge=1)
    max_batch_delay_ms: float = Field(0.0, ge=0)
    allowed_batch_sizes: Annotated[list[int], NoDecode] = Field(default_factory=list)
    max_queue_size: int = Field(1024, ge=1, description="queued requests per model")

    # Used by later parts of the server; named here so every setting has one home.
    http_server_address: str = "0.0.0.0:8080"
    redis_address: str = ""
    redis_cluster_mode: bool = False
    redis_key_duration: str = "12h"
    aws_region: str = ""
    aws_bucket: str = ""
    aws_s3_use_accelerate: bool = False
    s3_endpoint_url: str = ""

    log_level: str = "INFO"

    @field_validator("allowed_batch_sizes", mode="before")
    @classmethod
    def _split_sizes(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [int(v) for v in value.replace(" ", "").split(",") if v]
        return value

    @model_validator(mode="after")
    def _check_batching(self) -> Settings:
        sizes = self.allowed_batch_sizes
        if sizes:
            if sizes != sorted(set(sizes)) or sizes[0] < 1:
                raise ValueError("allowed_batch_sizes must be increasing positive integers")
            if sizes[-1] != self.max_batch_size:
                raise ValueError(
                    f"the largest allowed_batch_sizes ({sizes[-1]}) must equal "
                    f"max_batch_size ({self.max_batch_size})"
                )
        return self


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line flags of `python -m server [worker]`."""
    parser = argparse.ArgumentParser(prog="python -m server", description=__doc__.split("\n")[0])
    parser.add_argument("mode", nargs="?", default="serve", choices=["serve"], help="what to run")
    parser.add_argument("--config", type=Path, help="KEY=VALUE settings file (like .env)")
    parser.add_argument("--port", type=int, help="gRPC port (host from GRPC_SERVER_ADDRESS)")
    parser.add_argument("--model-dir", type=Path, help="model repository (MODEL_DIR)")
    parser.add_argument("--max-batch-size", type=int)
    parser.add_argument("--max-batch-delay-ms", type=float)
    parser.add_argument("--log-level")
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
    }
    values = {k: v for k, v in flags.items() if v is not None} | overrides
    settings = Settings(_env_file=env_files, **values)
    if args.port is not None:
        host = settings.grpc_server_address.rsplit(":", 1)[0]
        settings = settings.model_copy(update={"grpc_server_address": f"{host}:{args.port}"})
    return settings
