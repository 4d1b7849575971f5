"""UploadService: thin gRPC adapter over the Upload core (`server.protocols.serving_v1.uploads`)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from server.protocols.serving_v1.uploads import Uploads
from serving.v1 import upload_pb2, upload_pb2_grpc


class UploadServicer(upload_pb2_grpc.UploadServiceServicer):
    """Client-streaming uploads. A caller that goes away mid-stream makes the request
    iterator raise, which aborts the write: nothing is stored."""

    def __init__(self, uploads: Uploads) -> None:
        self.uploads = uploads

    def Upload(
        self, request_iterator: Iterator[upload_pb2.UploadRequest], context: grpc.ServicerContext
    ) -> upload_pb2.UploadResponse:
        return self.uploads.upload(request_iterator, context.is_active)
