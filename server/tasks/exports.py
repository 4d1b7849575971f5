"""ExportTasks / ImportTasks: task records as JSON Lines in object storage (S3 or the local folder store)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from google.protobuf import json_format

from server.errors import InvalidArgument
from server.storage.store import ObjectStore
from server.tasks import records
from server.tasks.records import Cursor
from server.tasks.store import TaskStore
from serving.v1 import task_pb2

EXPORT_PREFIX = "exports/tasks"
PAGE = 500


class TaskExports:
    """Writes matching records to one `.jsonl` object; reads such objects back."""

    def __init__(self, store: TaskStore, objects: ObjectStore) -> None:
        self.store = store
        self.objects = objects

    def export(self, task_filter: task_pb2.TaskFilter) -> tuple[str, str, int]:
        """(uri, url, number of records) of a new object holding every matching task, newest first."""
        records.check_filter(task_filter)
        count = 0

        def lines() -> Iterator[bytes]:
            nonlocal count
            cursor: Cursor | None = None
            while True:
                tasks, cursor = self.store.list(task_filter, PAGE, cursor)
                count += len(tasks)
                if tasks:
                    yield "".join(records.to_json(t) + "\n" for t in tasks).encode()
                if cursor is None:
                    return

        key = self.objects.new_key(f"tasks-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.jsonl", EXPORT_PREFIX)
        stored = self.objects.put(key, lines(), content_type="application/x-ndjson")
        return stored.uri, stored.url, count

    def import_(self, uri: str, overwrite: bool) -> tuple[int, int]:
        """(imported, skipped): existing ids are replaced only with `overwrite`; every line is checked first."""
        if not uri:
            raise InvalidArgument("uri: required (the uri ExportTasks returned, or an object key)")
        tasks: list[task_pb2.Task] = []
        with self.objects.open(self.objects.key_of(uri)) as stream:
            for number, line in enumerate(stream, 1):
                if not line.strip():
                    continue
                try:
                    task = records.from_json(line)
                except json_format.ParseError as exc:
                    raise InvalidArgument(f"uri: line {number} is not a task record: {exc}") from None
                records.check_id(task.id, f"line {number}: id")
                if not task.HasField("create_time"):
                    raise InvalidArgument(f"uri: line {number}: create_time missing")
                tasks.append(task)
        imported = sum(self.store.put(task, overwrite) for task in tasks)
        return imported, len(tasks) - imported
