"""TaskService: thin gRPC adapter over the task core (server/tasks)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from server.tasks.exports import TaskExports
from server.tasks.manager import TaskManager
from serving.v1 import task_pb2, task_pb2_grpc


class TaskServicer(task_pb2_grpc.TaskServiceServicer):
    """Every TaskService RPC: decode, call the core, encode."""

    def __init__(self, manager: TaskManager, exports: TaskExports) -> None:
        self.manager = manager
        self.exports = exports

    def CreateTask(
        self, request: task_pb2.CreateTaskRequest, context: grpc.ServicerContext
    ) -> task_pb2.CreateTaskResponse:
        return task_pb2.CreateTaskResponse(task=self.manager.create(request.task))

    def GetTask(self, request: task_pb2.GetTaskRequest, context: grpc.ServicerContext) -> task_pb2.GetTaskResponse:
        return task_pb2.GetTaskResponse(task=self.manager.get(request.id))

    def UpdateTask(
        self, request: task_pb2.UpdateTaskRequest, context: grpc.ServicerContext
    ) -> task_pb2.UpdateTaskResponse:
        return task_pb2.UpdateTaskResponse(task=self.manager.update(request.task, request.update_mask))

    def ListTasks(
        self, request: task_pb2.ListTasksRequest, context: grpc.ServicerContext
    ) -> task_pb2.ListTasksResponse:
        tasks, token = self.manager.list(request.filter, request.page_size, request.page_token)
        return task_pb2.ListTasksResponse(tasks=tasks, next_page_token=token)

    def DeleteTask(
        self, request: task_pb2.DeleteTaskRequest, context: grpc.ServicerContext
    ) -> task_pb2.DeleteTaskResponse:
        self.manager.delete(request.id)
        return task_pb2.DeleteTaskResponse()

    def DeleteTasks(
        self, request: task_pb2.DeleteTasksRequest, context: grpc.ServicerContext
    ) -> task_pb2.DeleteTasksResponse:
        return task_pb2.DeleteTasksResponse(deleted=self.manager.delete_matching(request.filter, request.all))

    def CancelTask(
        self, request: task_pb2.CancelTaskRequest, context: grpc.ServicerContext
    ) -> task_pb2.CancelTaskResponse:
        return task_pb2.CancelTaskResponse(task=self.manager.cancel(request.id))

    def WatchTask(
        self, request: task_pb2.WatchTaskRequest, context: grpc.ServicerContext
    ) -> Iterator[task_pb2.WatchTaskResponse]:
        for task in self.manager.watch(request.id, context.is_active):
            yield task_pb2.WatchTaskResponse(task=task)

    def ExportTasks(
        self, request: task_pb2.ExportTasksRequest, context: grpc.ServicerContext
    ) -> task_pb2.ExportTasksResponse:
        uri, url, count = self.exports.export(request.filter)
        return task_pb2.ExportTasksResponse(uri=uri, url=url, count=count)

    def ImportTasks(
        self, request: task_pb2.ImportTasksRequest, context: grpc.ServicerContext
    ) -> task_pb2.ImportTasksResponse:
        imported, skipped = self.exports.import_(request.uri, request.overwrite)
        return task_pb2.ImportTasksResponse(imported=imported, skipped=skipped)
