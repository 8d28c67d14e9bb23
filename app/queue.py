"""The one Celery configuration, shared by the API (which sends) and the worker (which runs).

The API never imports the worker's task functions: it sends tasks by name. Send only after the rows the
task reads are committed (``app.db.on_commit(session, lambda: enqueue_run(run.id))``), or the worker may
look for a run that does not exist yet.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

from celery import Celery

from app.config import Settings, get_settings

__all__ = ["RUN_TASK", "RunEnqueuer", "celery_config", "create_celery", "enqueue_run", "get_celery"]

RUN_TASK = "bertpt.runs.execute"
# Sends ``bertpt.runs.execute(run_id)``: enqueue_run with a Celery client in production, a recorder in tests.
RunEnqueuer = Callable[[str], object]


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": settings.redis_url,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,  # no result backend: run state lives in the database
        # A training task is acknowledged when it ends, so a worker that dies mid-run does not lose it;
        # each worker process holds at most one unstarted task.
        "task_acks_late": True,
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": settings.worker_concurrency,
        # Redis redelivers an unacknowledged task after this long: longer than any run.
        "broker_transport_options": {"visibility_timeout": settings.visibility_timeout},
        "task_routes": {RUN_TASK: {"queue": settings.training_queue}},
        "broker_connection_retry_on_startup": True,
    }


def create_celery(settings: Settings) -> Celery:
    celery = Celery("bertpt", set_as_current=False)
    celery.conf.update(celery_config(settings))
    return celery


@lru_cache(maxsize=1)
def get_celery() -> Celery:
    """The process's Celery client, built from :func:`~app.config.get_settings` on first use."""
    return create_celery(get_settings())


def enqueue_run(run_id: str, *, celery: Celery | None = None) -> str:
    """Send ``bertpt.runs.execute(run_id)`` to the training queue; returns the Celery task id."""
    result = (celery or get_celery()).send_task(RUN_TASK, args=[run_id])
    return str(result.id)
