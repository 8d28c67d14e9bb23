"""Celery tasks: thin bodies that call plain functions with ids.

``bertpt.runs.execute`` is delivered at least once (late acknowledgement; Redis redelivers after the
visibility timeout). That is safe because :func:`worker.executor.execute_run` starts with an atomic claim:
a duplicate does nothing. The same claim makes the retries safe: only errors raised before a run is
claimed reach this task (the database or Redis briefly unreachable), and a retry after a claim would find
the run no longer queued. ``bertpt.evaluations.execute`` is the same for an evaluation
(:func:`worker.evaluation_executor.execute_evaluation`), ``bertpt.analyze_corpus`` for a corpus analysis
(:func:`worker.analyses.execute_analysis`).
"""

from __future__ import annotations

from typing import Any

import redis
from sqlalchemy.exc import InterfaceError, OperationalError

from app.queue import ANALYSIS_TASK, EVALUATION_TASK, RUN_TASK
from worker.analyses import execute_analysis
from worker.celery_app import app
from worker.evaluation_executor import execute_evaluation
from worker.executor import execute_run

__all__ = ["CLAIMING_TASK", "TRANSIENT_ERRORS", "analyze_corpus", "evaluate", "execute"]

# Connection-level failures of the database and Redis: worth a retry in a few seconds.
TRANSIENT_ERRORS = (OperationalError, InterfaceError, redis.ConnectionError, redis.TimeoutError)
# The options of a task whose body starts with a claim: its transient errors retried, with backoff.
CLAIMING_TASK: dict[str, Any] = {
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": 5,
    "retry_backoff_max": 300,
    "retry_jitter": True,
    "max_retries": 10,
    "ignore_result": True,
}


@app.task(name=RUN_TASK, **CLAIMING_TASK)
def execute(run_id: str) -> None:
    """Train the run ``run_id`` (see :func:`worker.executor.execute_run`)."""
    execute_run(run_id)


@app.task(name=EVALUATION_TASK, **CLAIMING_TASK)
def evaluate(evaluation_id: str) -> None:
    """Compare the models of the evaluation ``evaluation_id`` (see
    :func:`worker.evaluation_executor.execute_evaluation`)."""
    execute_evaluation(evaluation_id)


@app.task(
    name=ANALYSIS_TASK,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=5,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=10,
    ignore_result=True,
)
def analyze_corpus(analysis_id: str) -> None:
    """Analyse a corpus with a model's tokenizer (see :func:`worker.analyses.execute_analysis`)."""
    execute_analysis(analysis_id)
