"""Builds the task parts from the settings (called once, by `App`) and starts and stops them in order."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from server.config import Settings
from server.predictor import Predictor
from server.storage.store import ObjectStore
from server.tasks.exports import TaskExports
from server.tasks.manager import TaskManager
from server.tasks.memory import MemoryTaskStore
from server.tasks.observer import NO_OBSERVER, TaskObserver
from server.tasks.predictions import PredictionTasks
from server.tasks.queue import MemoryTaskQueue, TaskQueue
from server.tasks.redis_client import connect, display_address
from server.tasks.redis_queue import RedisTaskQueue
from server.tasks.redis_store import RedisTaskStore
from server.tasks.store import TaskStore
from server.tasks.webhooks import WebhookSender
from server.tasks.worker import WorkerPool
from server.telemetry.tracing import Tracing

log = logging.getLogger(__name__)


@dataclass
class Tasks:
    """Everything about tasks: the store and queue, the RPC cores, webhooks and queue workers."""

    store: TaskStore
    queue: TaskQueue
    manager: TaskManager
    predictions: PredictionTasks
    exports: TaskExports
    sender: WebhookSender
    workers: WorkerPool | None

    def start_workers(self) -> None:
        """Start taking queue entries (once the models are loaded)."""
        if self.workers is not None:
            self.workers.start()

    def stop(self) -> None:
        """Workers finish what they run; webhooks in flight finish their attempt; then close."""
        if self.workers is not None:
            self.workers.stop()
        self.sender.stop()
        if self.workers is not None:
            self.workers.close()
        self.queue.close()
        self.store.close()


def open_tasks(
    settings: Settings,
    predictor: Predictor,
    objects: ObjectStore,
    worker_mode: bool = False,
    tracing: Tracing | None = None,
    observer: TaskObserver = NO_OBSERVER,
) -> Tasks:
    """Redis (or Redis Cluster) when REDIS_ADDRESS is set, else the in-memory store and queue.

    `observer` (the App's metrics) is told of task outcomes and webhook attempts.
    """
    ttl = settings.redis_key_duration
    store: TaskStore
    queue: TaskQueue
    if settings.redis_address:
        try:
            client = connect(
                settings.redis_address,
                settings.redis_cluster_mode,
                settings.redis_tls_ca_file,
                settings.redis_timeout_seconds,
            )
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
        store = RedisTaskStore(client, settings.redis_address, ttl, settings.redis_cluster_mode)
        queue = RedisTaskQueue(client, settings.redis_address)
        log.info(
            "tasks: Redis%s at %s, records kept %gs",
            " Cluster" if settings.redis_cluster_mode else "",
            display_address(settings.redis_address),
            ttl,
        )
    elif worker_mode:
        raise SystemExit("worker mode needs REDIS_ADDRESS: the in-memory task queue lives in one process")
    else:
        store = MemoryTaskStore(ttl)
        queue = MemoryTaskQueue()
    if worker_mode and settings.task_workers == 0:
        raise SystemExit("worker mode needs TASK_WORKERS of 1 or more")
    manager = TaskManager(store, queue, settings.webhook_allow_private, observer)
    sender = WebhookSender(
        store,
        settings.webhook_secret,
        settings.webhook_max_attempts,
        settings.webhook_timeout_seconds,
        settings.webhook_allow_private,
        settings.webhook_workers,
        tracing,
        observer,
    )
    workers = None
    if settings.task_workers:
        workers = WorkerPool(
            store, queue, predictor, sender, settings.task_workers, settings.task_visibility_timeout, tracing, observer
        )
    return Tasks(
        store=store,
        queue=queue,
        manager=manager,
        predictions=PredictionTasks(
            manager, predictor, settings.task_max_time_in_queue_seconds, settings.record_predictions
        ),
        exports=TaskExports(store, objects),
        sender=sender,
        workers=workers,
    )
