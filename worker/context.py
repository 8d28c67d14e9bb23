"""What a worker process executes runs and evaluations with: settings, database sessions, storage, the
live-stream client, the task senders and its identity. Built once per process, on first use (in a Celery
pool process, after the fork), or explicitly by tests and scripts.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial

import redis
from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.db import create_db_engine, create_session_factory
from app.queue import Enqueuer, RunEnqueuer, create_celery, enqueue_evaluation
from app.runs.live import create_redis
from app.runs.routing import RunSender
from app.storage import Storage, get_storage

__all__ = ["WorkerContext", "build_worker_context", "default_worker_id", "get_worker_context"]


def default_worker_id() -> str:
    """``<host>:<pid>``: which machine and process holds a run (shown to operators, kept on the run)."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class WorkerContext:
    settings: Settings
    session_factory: Callable[[], Session]
    storage: Storage
    redis: redis.Redis | None  # None: no live stream (the database still gets everything)
    worker_id: str
    # Sends a run's task (a retried attempt's); with None, the sweep of queued runs sends it in time.
    enqueue: RunEnqueuer = lambda run_id: None
    # Sends an evaluation's task (a retried attempt's, a succeeded run's downstream evaluation).
    enqueue_evaluation: Enqueuer = lambda evaluation_id: None
    # How often the supervisor writes progress, refreshes the heartbeat and looks for a cancel request.
    poll_interval_seconds: float = 1.0
    # How long a training process may take to stop (it checkpoints first) before it is terminated.
    stop_grace_seconds: float = 600.0


def build_worker_context(settings: Settings, *, worker_id: str | None = None) -> WorkerContext:
    celery = create_celery(settings)
    session_factory = create_session_factory(create_db_engine(settings.database_url))
    return WorkerContext(
        settings=settings,
        session_factory=session_factory,
        storage=get_storage(settings),
        redis=create_redis(settings.redis_url, socket_timeout=10),
        worker_id=worker_id or default_worker_id(),
        enqueue=RunSender(settings, session_factory, celery),  # to the run's class's queue
        enqueue_evaluation=partial(enqueue_evaluation, celery=celery),
    )


@lru_cache(maxsize=1)
def get_worker_context() -> WorkerContext:
    """The process's context, from :func:`~app.config.get_settings`."""
    return build_worker_context(get_settings())
