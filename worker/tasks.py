"""Celery tasks: thin bodies that call plain functions with ids.

``bertpt.runs.execute`` is delivered at least once (late acknowledgement; Redis redelivers after the
visibility timeout). That is safe because :func:`worker.executor.execute_run` starts with an atomic claim:
a duplicate does nothing. The same claim makes the retries safe: only errors raised before a run is
claimed reach this task (the database or Redis briefly unreachable), and a retry after a claim would find
the run no longer queued.
"""

from __future__ import annotations

import redis
from sqlalchemy.exc import InterfaceError, OperationalError

from app.queue import RUN_TASK
from worker.celery_app import app
from worker.executor import execute_run

__all__ = ["TRANSIENT_ERRORS", "execute"]

# Connection-level failures of the database and Redis: worth a retry in a few seconds.
TRANSIENT_ERRORS = (OperationalError, InterfaceError, redis.ConnectionError, redis.TimeoutError)


@app.task(
    name=RUN_TASK,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=5,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=10,
    ignore_result=True,
)
def execute(run_id: str) -> None:
    """Train the run ``run_id`` (see :func:`worker.executor.execute_run`)."""
    execute_run(run_id)
