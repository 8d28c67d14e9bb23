"""The one Celery configuration, shared by the API (which sends) and the worker (which runs).

The API never imports the worker's task functions: it sends tasks by name. Send only after the rows the
task reads are committed (``app.db.on_commit(session, lambda: enqueue_run(run.id))``), or the worker may
look for a run that does not exist yet.

Three tasks: ``bertpt.runs.execute(run_id)`` on the queue of the run's resource class,
``TRAINING_QUEUE.<class>`` (``training.cpu``, ``training.gpu``: :class:`app.runs.routing.RunSender` reads
the class from the run's row; without a queue it goes to the default class's); ``bertpt.evaluations.execute(
evaluation_id)`` on ``EVALUATION_QUEUE`` (by default ``TRAINING_QUEUE`` itself: an evaluation fine-tunes
models, on the same machines); ``bertpt.analyze_corpus(analysis_id)`` on ``ANALYSIS_QUEUE`` (by default
``TRAINING_QUEUE`` too).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

from celery import Celery

from app.config import Settings, get_settings

__all__ = [
    "ANALYSIS_TASK",
    "EVALUATION_TASK",
    "RUN_TASK",
    "Enqueuer",
    "RunEnqueuer",
    "celery_config",
    "create_celery",
    "enqueue_analysis",
    "enqueue_evaluation",
    "enqueue_run",
    "get_celery",
]

RUN_TASK = "bertpt.runs.execute"
EVALUATION_TASK = "bertpt.evaluations.execute"
ANALYSIS_TASK = "bertpt.analyze_corpus"
# Sends a job's task by its id: enqueue_run or enqueue_evaluation with a Celery client in production, a
# recorder in tests.
Enqueuer = Callable[[str], object]
# Sends ``bertpt.runs.execute(run_id)``.
RunEnqueuer = Enqueuer


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
        "task_routes": {
            RUN_TASK: {"queue": settings.training_queue_for(settings.default_resource_class)},
            EVALUATION_TASK: {"queue": settings.evaluation_queue_name()},
            ANALYSIS_TASK: {"queue": settings.analysis_queue_name()},
        },
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


def enqueue_run(run_id: str, *, queue: str | None = None, celery: Celery | None = None) -> str:
    """Send ``bertpt.runs.execute(run_id)`` to ``queue`` (default: the default resource class's training
    queue); returns the Celery task id."""
    options = {"queue": queue} if queue is not None else {}  # else its route: task_routes
    result = (celery or get_celery()).send_task(RUN_TASK, args=[run_id], **options)
    return str(result.id)


def enqueue_evaluation(evaluation_id: str, *, celery: Celery | None = None) -> str:
    """Send ``bertpt.evaluations.execute(evaluation_id)`` to the evaluation queue; returns the task id."""
    result = (celery or get_celery()).send_task(EVALUATION_TASK, args=[evaluation_id])
    return str(result.id)


def enqueue_analysis(analysis_id: str, *, celery: Celery | None = None) -> str:
    """Send ``bertpt.analyze_corpus(analysis_id)`` to the analysis queue; returns the task id."""
    result = (celery or get_celery()).send_task(ANALYSIS_TASK, args=[analysis_id])
    return str(result.id)
