"""A run's lifecycle events (``run_events``): their vocabulary and how one is recorded.

The API records what a client did (``queued``, ``cancel_requested``, ``cancelled`` before the start); the
worker records the rest as the training reports it (:mod:`worker.recorder`). The same rows are served by
``GET /v1/runs/{id}/events`` and sent on the live stream.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, Literal

from sqlalchemy.orm import Session

from app.models import RunEvent, utcnow

__all__ = ["EventLevel", "RunEventType", "add_event"]

EventLevel = Literal["info", "warning", "error"]


class RunEventType(enum.StrEnum):
    QUEUED = "queued"  # submitted
    # No live worker serves its queue (or has its devices); once per attempt (data: queue, reason, attempt)
    WAITING_FOR_WORKER = "waiting_for_worker"
    CLAIMED = "claimed"  # a worker took it (data: worker_id, attempt)
    PREPARING = "preparing"  # loading the base model, preparing the data
    DATA_PREPARED = "data_prepared"  # instances ready (data: corpus statistics, splits)
    TRAINING_STARTED = "training_started"  # the first step begins (data: max_steps, resumed_from_step, ...)
    EVALUATION = "evaluation"  # an evaluation of the eval or reference split (data: metrics, baseline)
    CHECKPOINT_SAVED = "checkpoint_saved"  # a checkpoint is kept (data: step, size_bytes, sha256)
    WARNING = "warning"  # something that makes the run worse (data: the warning)
    RETRYING = "retrying"  # an attempt was interrupted; the next one resumes (data: attempt, checkpoint_step)
    RESUMED = "resumed"  # its owner resumed a failed or cancelled run (data: checkpoint_step)
    CANCEL_REQUESTED = "cancel_requested"
    CANCELLED = "cancelled"
    FAILED = "failed"  # data: the run's error
    SUCCEEDED = "succeeded"  # data: steps, runtime, baseline and final metrics


def add_event(
    session: Session,
    run_id: str,
    type: RunEventType,
    message: str,
    *,
    level: EventLevel = "info",
    data: Mapping[str, Any] | None = None,
) -> RunEvent:
    """Record one event of the run; the row gets its id at once (the live stream carries it)."""
    event = RunEvent(
        run_id=run_id,
        type=type.value,
        level=level,
        message=message,
        data=dict(data or {}),
        created_at=utcnow(),
    )
    session.add(event)
    session.flush()
    return event
