"""The Upload core: a stream of `UploadRequest` messages in, one `UploadResponse` out.

The first message carries the metadata, every later one a chunk of bytes;
the chunks stream straight into the `ObjectStore` (never the whole file in
memory). With `task_id` the stored file is appended to that task's `files`.
Knows nothing of gRPC: the servicer and the HTTP shim's multipart route both
feed it messages.
"""

from __future__ import annotations

import contextlib
import mimetypes
import re
from collections.abc import Callable, Iterable, Iterator

from opentelemetry import trace

from server.errors import Cancelled, FailedPrecondition, InvalidArgument
from server.storage.store import DEFAULT_CONTENT_TYPE, ObjectStore, StoredObject, check_sha256
from server.tasks.store import TaskStore
from serving.v1 import task_pb2, upload_pb2

_CONTENT_TYPE = re.compile(r"[\w.+-]+/[\w.+-]+(\s*;\s*[\w.+-]+=[\w.+\"-]+)*", re.ASCII)


class Uploads:
    """Stores uploaded files; `tasks` (optional) is where `task_id` files are recorded.

    `uploaded(nbytes)` (optional, e.g. the metrics) is called once per file stored successfully.
    """

    def __init__(
        self,
        store: ObjectStore,
        tasks: TaskStore | None = None,
        tracer: trace.Tracer | None = None,
        uploaded: Callable[[int], None] | None = None,
    ) -> None:
        self.store = store
        self.uploaded = uploaded
        self.tasks = tasks
        self.tracer = tracer  # an `upload` span around storing the bytes, when given

    def upload(
        self, messages: Iterable[upload_pb2.UploadRequest], is_active: Callable[[], bool] = lambda: True
    ) -> upload_pb2.UploadResponse:
        """Store one file streamed as metadata + chunks; nothing is stored if anything fails.

        `is_active()` tells whether the caller is still there. A cancelled call can
        look like a normal end of the stream to the handler (gRPC reports "no more
        messages" before the cancellation), so the end is trusted only while the
        call is active, and a file stored as the caller went away is removed again.
        """
        stream = iter(messages)
        first = next(stream, None)
        if first is None or first.WhichOneof("part") != "metadata":
            raise InvalidArgument("first message must be metadata (file_name, content_type, ...), then chunks")
        metadata = first.metadata
        if metadata.size < 0:
            raise InvalidArgument(f"metadata.size: must be >= 0 (0: unknown), got {metadata.size}")
        sha256 = check_sha256(metadata.sha256, "metadata.sha256") if metadata.sha256 else None
        content_type = content_type_for(metadata.content_type, metadata.file_name)
        if metadata.task_id:
            self._task_store().get(metadata.task_id)  # NotFound before anything is stored
        key = self.store.new_key(metadata.file_name, metadata.key_prefix)
        with self._span(key) as span:
            stored = self.store.put(
                key,
                _chunks(stream, is_active),
                content_type=content_type,
                size=metadata.size or None,
                sha256=sha256,
            )
            if not is_active():
                self.store.delete(stored.key)
                raise Cancelled("the caller cancelled the upload; nothing was stored")
            if span is not None:
                span.set_attribute("upload.bytes", stored.size)
        if metadata.task_id:
            self._attach(metadata.task_id, metadata.file_name, stored)
        if self.uploaded is not None:
            self.uploaded(stored.size)
        return upload_response(stored)

    def _span(self, key: str) -> contextlib.AbstractContextManager[trace.Span | None]:
        if self.tracer is None:
            return contextlib.nullcontext()
        return self.tracer.start_as_current_span("upload", attributes={"upload.key": key})

    def _task_store(self) -> TaskStore:
        if self.tasks is None:
            raise FailedPrecondition("metadata.task_id: this server has no task store to attach files to")
        return self.tasks

    def _attach(self, task_id: str, file_name: str, stored: StoredObject) -> None:
        """Append the file to the task; on failure the object is removed again."""
        entry = task_pb2.TaskFile(
            name=file_name or stored.key.rsplit("/", 1)[-1],
            uri=stored.uri,
            url=stored.url,
            content_type=stored.content_type,
            size=stored.size,
        )
        try:
            self._task_store().update(task_id, lambda task: task.files.append(entry))
        except BaseException:
            self.store.delete(stored.key)
            raise


def content_type_for(given: str, file_name: str) -> str:
    """The declared content type (checked), else a guess from the name, else octet-stream."""
    if given:
        if len(given) > 255 or not _CONTENT_TYPE.fullmatch(given.strip()):
            raise InvalidArgument(f"metadata.content_type: expected a media type like 'image/png', got {given!r}")
        return given.strip()
    guessed, _ = mimetypes.guess_type(file_name)
    return guessed or DEFAULT_CONTENT_TYPE


def upload_response(stored: StoredObject) -> upload_pb2.UploadResponse:
    return upload_pb2.UploadResponse(
        key=stored.key,
        uri=stored.uri,
        url=stored.url,
        presigned_url=stored.presigned_url,
        size=stored.size,
        sha256=stored.sha256,
        content_type=stored.content_type,
    )


def _chunks(messages: Iterator[upload_pb2.UploadRequest], is_active: Callable[[], bool]) -> Iterator[bytes]:
    """The bytes of the messages after the first; a second metadata message is an error."""
    for index, message in enumerate(messages, start=1):
        if message.WhichOneof("part") == "metadata":
            raise InvalidArgument(f"message {index}: metadata may only be sent in the first message")
        yield message.chunk
    if not is_active():
        raise Cancelled("the caller cancelled the upload; nothing was stored")
