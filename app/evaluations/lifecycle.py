"""The worker's writes to an evaluation (claim, heartbeat with progress, retry, the end) and the
housekeeping's (the reaper, the re-send of evaluations left queued): the machinery of runs
(:mod:`app.jobs.leases`), with the transitions of :mod:`app.evaluations.states`.

Repository-style functions on a caller's Session; the caller's boundary (``session_scope``) commits.
Every write after the claim is fenced by the evaluation's ``attempt`` and a held status: an attempt whose
evaluation was taken away (reaped, claimed again) changes nothing any more.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from app.evaluations.states import EVALUATION_STATES, EvaluationStatus
from app.jobs import leases
from app.jobs.leases import Heartbeat
from app.jobs.states import Trigger
from app.models import Evaluation, utcnow
from app.queue import Enqueuer
from app.runs.lifecycle import attempt_of, retry_allowed

__all__ = [
    "ClaimedEvaluation",
    "Reaped",
    "claim_evaluation",
    "finish_evaluation",
    "heartbeat",
    "interrupted_message",
    "reap_expired",
    "resend_stale_queued",
    "retry_evaluation",
]

_ENDING_TRIGGERS = (Trigger.SUCCEED, Trigger.FAIL, Trigger.STOP)


@dataclass(frozen=True)
class ClaimedEvaluation:
    """What the claim returned: the evaluation's identity and the fencing ``attempt`` for every write."""

    id: str
    tenant_id: str
    attempt: int
    worker_id: str


@dataclass(frozen=True)
class Reaped:
    """An evaluation the reaper took back, and its new status."""

    evaluation_id: str
    status: EvaluationStatus


def claim_evaluation(
    session: Session, evaluation_id: str, worker_id: str, *, now: datetime | None = None
) -> ClaimedEvaluation | None:
    """The ``claim`` transition (``queued -> running``) with ``attempt + 1``, in one conditional UPDATE;
    None when it is not queued (a duplicate delivery, or cancelled meanwhile) or does not exist."""
    row = leases.claim(session, Evaluation, EVALUATION_STATES, evaluation_id, worker_id, now=now)
    if row is None:
        return None
    return ClaimedEvaluation(id=row.id, tenant_id=row.tenant_id, attempt=row.attempt, worker_id=worker_id)


def heartbeat(
    session: Session,
    evaluation_id: str,
    attempt: int,
    *,
    progress: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> Heartbeat[EvaluationStatus]:
    """Refresh the lease (and the progress, when given) and read back the status: ``cancel_requested``
    when the owner asked to cancel (``cancelling``)."""
    values = {"progress": dict(progress)} if progress is not None else {}
    returning = (Evaluation.status,)
    row = leases.renew(
        session, Evaluation, EVALUATION_STATES, evaluation_id, attempt, returning=returning, now=now, **values
    )
    if row is None:
        return Heartbeat(owned=False)
    status = EvaluationStatus(row.status)
    return Heartbeat(owned=True, cancel_requested=status == EvaluationStatus.CANCELLING, status=status)


def finish_evaluation(
    session: Session,
    evaluation_id: str,
    attempt: int,
    trigger: Trigger,
    *,
    result: Mapping[str, Any] | None = None,
    error: Mapping[str, Any] | None = None,
    progress: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> bool:
    """A transition that ends the evaluation (``succeed``, ``fail`` or ``stop``), with its result or
    error. False when this attempt no longer holds it (nothing is written)."""
    if trigger not in _ENDING_TRIGGERS:
        raise ValueError(f"finish_evaluation ends an evaluation, not {trigger.value!r}")
    now = now or utcnow()
    values: dict[str, Any] = {
        "finished_at": now,
        "heartbeat_at": now,
        "result": dict(result) if result is not None else None,
        "error": dict(error) if error is not None else None,
    }
    if progress is not None:
        values["progress"] = dict(progress)
    return leases.transition_held(
        session, Evaluation, EVALUATION_STATES, evaluation_id, attempt, trigger, **values
    )


def retry_evaluation(
    session: Session, evaluation_id: str, attempt: int, *, now: datetime | None = None
) -> bool:
    """The ``retry`` transition (``running -> queued``) of an interrupted attempt that still holds the
    evaluation: the next claim starts it over. The caller sends its task after the commit (``sent_at`` is
    set, so the sweep does not send it meanwhile). False when this attempt no longer holds it, or it is
    cancelling."""
    now = now or utcnow()
    return leases.transition_held(
        session,
        Evaluation,
        EVALUATION_STATES,
        evaluation_id,
        attempt,
        Trigger.RETRY,
        sent_at=now,
        heartbeat_at=now,
        error=None,
        progress={},
    )


def resend_stale_queued(
    session: Session, *, older_than: timedelta, enqueue: Enqueuer, limit: int = 100
) -> list[str]:
    """Send again the task of every evaluation still queued ``older_than`` after its last send (a send
    that failed, a lost message; the claim makes a duplicate a no-op); their ids."""
    return leases.resend_stale_queued(
        session, Evaluation, EVALUATION_STATES, older_than=older_than, enqueue=enqueue, limit=limit
    )


def interrupted_message(attempt: int, max_attempts: int, cause: str) -> str:
    """``"attempt 1 of 3 was interrupted: <cause>; attempt 2 of 3 starts over"``, or for the last attempt
    what its owner can do. An evaluation keeps nothing between attempts: the next one starts over, with
    the same seeds and splits."""
    this = attempt_of(attempt, 0, max_attempts)
    cause = cause.rstrip(".")
    if retry_allowed(attempt, 0, max_attempts):
        return f"{this} was interrupted: {cause}; {attempt_of(attempt + 1, 0, max_attempts)} starts over"
    return f"{this}, the last, was interrupted: {cause}; submit the evaluation again (POST /v1/evaluations)"


def reap_expired(
    session: Session,
    *,
    timeout: timedelta,
    max_attempts: int,
    now: datetime | None = None,
    limit: int = 100,
) -> list[Reaped]:
    """Take back every evaluation whose holder's heartbeat is older than ``timeout``: one in
    ``cancelling`` is cancelled (``stop``); another is queued again (``retry``) while attempts are left,
    else failed (``fail``, error type ``worker_lost``). Rows are taken with ``SKIP LOCKED``. The caller
    sends the task of every evaluation back in ``queued`` after the commit."""
    now = now or utcnow()
    reaped = []
    for evaluation in leases.expired_leases(
        session, Evaluation, EVALUATION_STATES.held, now - timeout, limit=limit
    ):
        silent = (now - evaluation.heartbeat_at).total_seconds() if evaluation.heartbeat_at else None
        lost = f"worker {evaluation.worker_id or 'unknown'} stopped answering" + (
            f" (no heartbeat for {silent:,.0f} s)" if silent else ""
        )
        if evaluation.status == EvaluationStatus.CANCELLING:
            trigger = Trigger.STOP
            evaluation.error = None
        elif retry_allowed(evaluation.attempt, 0, max_attempts):
            trigger = Trigger.RETRY
            evaluation.sent_at = now
            evaluation.progress = {}
        else:
            trigger = Trigger.FAIL
            message = interrupted_message(evaluation.attempt, max_attempts, lost)
            evaluation.error = {"type": "worker_lost", "message": message}
        leases.set_status(session, evaluation, EVALUATION_STATES, EVALUATION_STATES.target(trigger), now=now)
        reaped.append(Reaped(evaluation.id, evaluation.status))
    session.flush()
    return reaped
