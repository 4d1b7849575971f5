"""`S3ObjectStore`: objects in an S3 bucket (AWS, or an S3-compatible endpoint) through boto3.

One boto3 client is created per store and shared by every thread (boto3
clients are thread-safe); its connection pool is sized to the RPC thread
pool, and calls retry in botocore's "standard" mode. Streaming writes are in
`server.storage.s3_multipart`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, cast
from urllib.parse import quote, urlparse

import boto3
from botocore.config import Config

from server.errors import InvalidArgument, NotFound
from server.storage.keys import check_key
from server.storage.s3_errors import storage_error
from server.storage.s3_multipart import MultipartWriter
from server.storage.store import DEFAULT_CONTENT_TYPE, ObjectStore, StoredObject, StreamDigest

log = logging.getLogger(__name__)

MAX_PARTS = 10_000  # S3's limit of parts per multipart upload


def make_s3_client(
    *,
    region: str,
    endpoint_url: str,
    accelerate: bool,
    max_pool_connections: int,
    max_attempts: int,
    connect_timeout: float = 2.0,
    read_timeout: float = 5.0,
) -> Any:
    """The shared boto3 S3 client; credentials come from boto3's own chain.

    A store that stops answering fails a call after about `max_attempts` x `read_timeout`
    (botocore retries timeouts; its own defaults, 60 s each, would keep a caller for minutes).
    """
    s3: dict[str, Any] = {}
    if accelerate:
        s3["use_accelerate_endpoint"] = True
    elif endpoint_url:
        s3["addressing_style"] = "path"  # what MinIO and most S3-compatible servers expect
    config = Config(
        max_pool_connections=max_pool_connections,
        retries={"mode": "standard", "max_attempts": max_attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        s3=cast(Any, s3) or None,  # botocore's TypedDict of the same keys
        signature_version="s3v4",  # also for presigned URLs (SigV2 is retired)
        # Checksums only where S3 requires them: several S3-compatible stores
        # reject the newer default trailing checksums; SHA-256 is checked here.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client(
        "s3", region_name=region or None, endpoint_url=endpoint_url or None, config=config
    )


class S3ObjectStore(ObjectStore):
    """Objects in `bucket`; `uri` is `s3://bucket/key`, `url` the object's https (or endpoint) URL."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        *,
        key_prefix: str = "",
        max_bytes: int,
        part_size: int,
        part_threads: int,
        presign_expiry_seconds: int = 0,
        endpoint_url: str = "",
        accelerate: bool = False,
    ) -> None:
        super().__init__(key_prefix, max_bytes)
        self.client = client
        self.bucket = bucket
        self.part_size = part_size
        self.presign_expiry_seconds = presign_expiry_seconds
        self.endpoint_url = endpoint_url.rstrip("/")
        self.accelerate = accelerate
        self.executor = ThreadPoolExecutor(max_workers=part_threads, thread_name_prefix="s3-part")
        self._orphans: list[tuple[str, str]] = []  # (key, upload id) whose abort failed
        self._lock = threading.Lock()

    def call(self, action: str, key: str, operation: str, **params: Any) -> Any:
        """`client.<operation>(Bucket=bucket, **params)`, errors mapped for the caller."""
        try:
            return getattr(self.client, operation)(Bucket=self.bucket, **params)
        except Exception as exc:
            raise storage_error(exc, self.bucket, action, key) from None

    def put(
        self,
        key: str,
        chunks: Iterable[bytes],
        *,
        content_type: str = DEFAULT_CONTENT_TYPE,
        size: int | None = None,
        sha256: str | None = None,
    ) -> StoredObject:
        check_key(key)
        digest = StreamDigest(key, self.max_bytes, size, sha256)
        self.retry_aborts()
        sha256_hex = MultipartWriter(self, key, content_type).write(chunks, digest)
        return self.describe(key, digest.size, sha256_hex, content_type)

    def put_bytes(self, key: str, data: bytes, *, content_type: str = DEFAULT_CONTENT_TYPE) -> StoredObject:
        if len(data) >= self.part_size:
            return super().put_bytes(key, data, content_type=content_type)
        check_key(key)
        digest = StreamDigest(key, self.max_bytes, len(data))
        digest.add(data)
        sha256 = digest.finish()
        self.retry_aborts()
        self.call("storing the object", key, "put_object", Key=key, Body=data, ContentType=content_type)
        return self.describe(key, len(data), sha256, content_type)

    def open(self, key: str) -> BinaryIO:
        body: BinaryIO = self.call("reading the object", check_key(key), "get_object", Key=key)["Body"]
        return body

    def delete(self, key: str) -> None:
        self.call("deleting the object", check_key(key), "delete_object", Key=key)

    def exists(self, key: str) -> bool:
        try:
            self.call("looking up the object", check_key(key), "head_object", Key=key)
        except NotFound:
            return False
        return True

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def url(self, key: str) -> str:
        path = quote(key)
        if self.endpoint_url:
            return f"{self.endpoint_url}/{self.bucket}/{path}"
        if self.accelerate:
            return f"https://{self.bucket}.s3-accelerate.amazonaws.com/{path}"
        region = self.client.meta.region_name or "us-east-1"
        if "." in self.bucket:  # virtual-hosted names with dots break TLS host matching
            return f"https://s3.{region}.amazonaws.com/{self.bucket}/{path}"
        return f"https://{self.bucket}.s3.{region}.amazonaws.com/{path}"

    def presigned_url(self, key: str) -> str:
        if self.presign_expiry_seconds <= 0:
            return ""
        try:
            url: str = self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.presign_expiry_seconds
            )
        except Exception as exc:
            raise storage_error(exc, self.bucket, "signing a URL", key) from None
        return url

    def key_of(self, uri: str) -> str:
        try:
            parsed = urlparse(uri)
        except ValueError as exc:  # e.g. an unclosed IPv6 bracket
            raise InvalidArgument(f"uri {uri!r}: not a URI or key ({exc})") from None
        if parsed.scheme == "s3":
            if parsed.netloc != self.bucket:
                raise InvalidArgument(f"uri {uri!r}: not in the configured bucket '{self.bucket}'")
            return check_key(parsed.path.lstrip("/"))
        if parsed.scheme:
            raise InvalidArgument(f"uri {uri!r}: expected s3://{self.bucket}/<key> or a key")
        return check_key(uri)

    def abort_upload(self, key: str, upload_id: str) -> None:
        """Abort a multipart upload; if S3 cannot be reached, retry on a later write."""
        try:
            self.call("aborting a multipart upload", key, "abort_multipart_upload", Key=key, UploadId=upload_id)
        except NotFound:
            pass  # NoSuchUpload: already gone
        except Exception as exc:
            log.warning("could not abort the multipart upload of %s (%s); will retry", key, exc)
            with self._lock:
                self._orphans.append((key, upload_id))

    def retry_aborts(self) -> None:
        """Abort the uploads whose earlier abort failed (S3 was unreachable then)."""
        with self._lock:
            orphans, self._orphans = self._orphans, []
        for key, upload_id in orphans:
            self.abort_upload(key, upload_id)

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self.retry_aborts()
        self.client.close()
