"""Test servicers whose behaviour the request chooses, behind a real HttpGateway.

`ScriptedTasks` is a TaskService whose GetTask answers by id:

- `ok`: a task whose metadata echoes what the servicer saw (invocation
  metadata, peer, transport, whether a deadline was set);
- `raise-<CODE>`: raises the `server.errors` class with that code;
- `abort-<CODE>`: calls `context.abort` with that code;
- `setcode-<CODE>`: sets the code and details on the context and returns;
- `bug`: raises a RuntimeError (a bug: answered INTERNAL);
- `wait`: blocks until the call ends (its done callback runs), then records it.

WatchTask streams QUEUED, waits for `proceed`, then SUCCEEDED (`step`), or
fails after the first message (`fail-after-one`), or blocks after it until the
call ends (`hang`), or fails before any message (`missing`). ListTasks echoes its request as JSON in `next_page_token`;
UpdateTask returns the task it got; DeleteTasks answers a large int64.

`CountingUploads` is an UploadService that hashes what it receives and can
be held after the first chunk.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator

import grpc
from google.protobuf import json_format

from server import errors
from serving.v1 import task_pb2, task_pb2_grpc, upload_pb2, upload_pb2_grpc

WAIT_S = 10.0
ERROR_CLASSES = {
    cls.code.name: cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, errors.ServingError) and cls is not errors.ServingError
}


class ScriptedTasks(task_pb2_grpc.TaskServiceServicer):
    """See the module docstring."""

    def __init__(self) -> None:
        self.proceed = threading.Event()
        self.call_ended = threading.Event()
        self.saw_inactive = threading.Event()

    def GetTask(self, request: task_pb2.GetTaskRequest, context: grpc.ServicerContext) -> task_pb2.GetTaskResponse:
        kind, _, code = request.id.partition("-")
        if kind == "raise":
            raise ERROR_CLASSES[code](f"raised {code}")
        if kind == "abort":
            context.abort(grpc.StatusCode[code], f"aborted {code}")
        if kind == "setcode":
            context.set_code(grpc.StatusCode[code])
            context.set_details(f"set {code}")
            return task_pb2.GetTaskResponse()
        if kind == "bug":
            raise RuntimeError("a bug with a secret in its message")
        if kind == "wait":
            ended = threading.Event()
            if not context.add_callback(ended.set):
                ended.set()  # the call was over before the callback could be added (grpc's contract)
            if ended.wait(WAIT_S):
                self.call_ended.set()
            if not context.is_active():
                self.saw_inactive.set()
            return task_pb2.GetTaskResponse()
        remaining = context.time_remaining()
        metadata = {
            key: value if isinstance(value, str) else value.hex() for key, value in context.invocation_metadata()
        }
        metadata |= {
            "peer": context.peer(),
            "transport": getattr(context, "transport", "grpc"),
            "deadline": "none" if remaining is None else f"{remaining:.3f}",
            "route": str(getattr(context, "route", None)),
        }
        return task_pb2.GetTaskResponse(task=task_pb2.Task(id=request.id, metadata=metadata))

    def WatchTask(
        self, request: task_pb2.WatchTaskRequest, context: grpc.ServicerContext
    ) -> Iterator[task_pb2.WatchTaskResponse]:
        if request.id == "missing":
            raise errors.NotFound("task 'missing' not found")
        yield task_pb2.WatchTaskResponse(task=task_pb2.Task(id=request.id, status=task_pb2.TASK_STATUS_QUEUED))
        if request.id == "fail-after-one":
            raise errors.Unavailable("the store went away")
        if request.id == "hang":
            ended = threading.Event()
            if not context.add_callback(ended.set):
                ended.set()  # the call was over before the callback could be added (grpc's contract)
            if ended.wait(WAIT_S):
                self.call_ended.set()
            return
        status = task_pb2.TASK_STATUS_SUCCEEDED if self.proceed.wait(WAIT_S) else task_pb2.TASK_STATUS_EXPIRED
        yield task_pb2.WatchTaskResponse(task=task_pb2.Task(id=request.id, status=status))

    def ListTasks(
        self, request: task_pb2.ListTasksRequest, context: grpc.ServicerContext
    ) -> task_pb2.ListTasksResponse:
        return task_pb2.ListTasksResponse(next_page_token=json_format.MessageToJson(request, indent=None))

    def UpdateTask(
        self, request: task_pb2.UpdateTaskRequest, context: grpc.ServicerContext
    ) -> task_pb2.UpdateTaskResponse:
        task = task_pb2.Task()
        task.CopyFrom(request.task)
        task.metadata["update_mask"] = ",".join(request.update_mask.paths)
        return task_pb2.UpdateTaskResponse(task=task)

    def DeleteTasks(
        self, request: task_pb2.DeleteTasksRequest, context: grpc.ServicerContext
    ) -> task_pb2.DeleteTasksResponse:
        return task_pb2.DeleteTasksResponse(deleted=2**53 + 1)


class CountingUploads(upload_pb2_grpc.UploadServiceServicer):
    """Hashes the chunks it receives; `hold` keeps it waiting after the first chunk."""

    def __init__(self) -> None:
        self.first_chunk = threading.Event()
        self.hold = threading.Event()
        self.hold.set()
        self.chunk_sizes: list[int] = []
        self.metadata: upload_pb2.UploadMetadata | None = None

    def Upload(
        self, request_iterator: Iterator[upload_pb2.UploadRequest], context: grpc.ServicerContext
    ) -> upload_pb2.UploadResponse:
        digest = hashlib.sha256()
        for message in request_iterator:
            if message.WhichOneof("part") == "metadata":
                self.metadata = message.metadata
                continue
            digest.update(message.chunk)
            self.chunk_sizes.append(len(message.chunk))
            self.first_chunk.set()
            if not self.hold.wait(WAIT_S):
                raise errors.Internal("the test never released the upload")
        meta = self.metadata or upload_pb2.UploadMetadata()
        return upload_pb2.UploadResponse(
            key=meta.file_name, content_type=meta.content_type, size=sum(self.chunk_sizes), sha256=digest.hexdigest()
        )
