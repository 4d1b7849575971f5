"""Builds the configured `ObjectStore` from the settings (called once, by `App`)."""

from __future__ import annotations

import logging

from server.config import Settings
from server.storage.local import LocalObjectStore
from server.storage.s3 import MAX_PARTS, S3ObjectStore, make_s3_client
from server.storage.store import ObjectStore

log = logging.getLogger(__name__)


def open_object_store(settings: Settings) -> ObjectStore:
    """S3 (AWS or S3_ENDPOINT_URL) when AWS_BUCKET is set, else the local folder UPLOAD_DIR."""
    store: ObjectStore
    if not settings.aws_bucket:
        store = LocalObjectStore(
            settings.upload_dir,
            key_prefix=settings.s3_key_prefix,
            max_bytes=settings.max_upload_bytes,
            public_base_url=settings.public_base_url,
            fsync=settings.upload_fsync,
        )
        log.info("object storage: local folder %s", store.root)
        return store
    if settings.aws_s3_use_accelerate and settings.s3_endpoint_url:
        raise SystemExit("object storage: AWS_S3_USE_ACCELERATE and S3_ENDPOINT_URL exclude each other; set one")
    if settings.max_upload_bytes > settings.upload_part_size * MAX_PARTS:
        raise SystemExit(
            f"object storage: MAX_UPLOAD_BYTES ({settings.max_upload_bytes}) needs more than {MAX_PARTS} "
            f"parts of UPLOAD_PART_SIZE ({settings.upload_part_size}); raise UPLOAD_PART_SIZE"
        )
    workers = settings.grpc_max_workers
    client = make_s3_client(
        region=settings.aws_region,
        endpoint_url=settings.s3_endpoint_url,
        accelerate=settings.aws_s3_use_accelerate,
        # Each RPC thread may have one call of its own and one part in flight.
        max_pool_connections=2 * workers,
        max_attempts=settings.s3_max_attempts,
        connect_timeout=settings.s3_connect_timeout_seconds,
        read_timeout=settings.s3_read_timeout_seconds,
    )
    store = S3ObjectStore(
        client,
        settings.aws_bucket,
        key_prefix=settings.s3_key_prefix,
        max_bytes=settings.max_upload_bytes,
        part_size=settings.upload_part_size,
        part_threads=workers,
        presign_expiry_seconds=settings.presign_expiry_seconds,
        endpoint_url=settings.s3_endpoint_url,
        accelerate=settings.aws_s3_use_accelerate,
    )
    where = settings.s3_endpoint_url or ("S3 accelerate" if settings.aws_s3_use_accelerate else "AWS S3")
    log.info("object storage: bucket %s at %s", settings.aws_bucket, where)
    return store
