"""The conditional SQL of a job that workers hold under a lease (a run, an evaluation), written once for
both: the claim, the writes of the attempt that holds it, and the queries of the housekeeping.

- **claim**: one conditional UPDATE takes a queued job, ``attempt + 1``: of two deliveries of the same
  task, exactly one claims it;
- **held writes** (heartbeat, transitions): fenced by ``attempt`` and a held status, so an attempt whose
  job was taken away (reaped, cancelled) changes nothing any more, and learns it from the return value;
- **the end of a job**: every change to a terminal status (a held transition, or :func:`set_status` of a
  job the API or a reaper holds locked) writes the job's webhook events in the same transaction
  (:func:`app.webhooks.outbox.record_ended`), so none is missed and none is recorded for a change that
  rolls back;
- **sweeps**: jobs still queued long after their task was sent (:func:`resend_stale_queued`), and jobs
  whose holder's heartbeat is older than the lease (:func:`expired_leases`), locked ``FOR UPDATE SKIP
  LOCKED`` so that several housekeepers never act twice.

The caller's boundary (``session_scope``) commits. The job tables share the column names used here:
``id``, ``tenant_id``, ``status``, ``attempt``, ``worker_id``, ``started_at``, ``heartbeat_at``,
``sent_at``, ``created_at``, ``error``.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, Row, func, select, update
from sqlalchemy.orm import Session

from app.jobs.states import StateMachine, Trigger
from app.models import Evaluation, Run, utcnow
from app.queue import Enqueuer
from app.webhooks.outbox import record_ended

__all__ = [
    "Heartbeat",
    "claim",
    "expired_leases",
    "held",
    "renew",
    "resend_stale_queued",
    "set_status",
    "stale_unclaimed",
    "transition_held",
]

J = TypeVar("J", Run, Evaluation)
S = TypeVar("S", bound=enum.StrEnum)


@dataclass(frozen=True)
class Heartbeat(Generic[S]):
    """The job as the heartbeat found it: whether cancellation was asked for, its status, and whether
    this attempt still owns it (False: stop working on it). ``confirmed`` False: the database could not
    be reached, and the rest is what the attempt knew before (its lease was not renewed)."""

    owned: bool
    cancel_requested: bool = False
    status: S | None = None
    confirmed: bool = True


def claim(
    session: Session,
    model: type[J],
    machine: StateMachine[Any],
    job_id: str,
    worker_id: str,
    *,
    now: datetime | None = None,
    where: Sequence[ColumnElement[bool]] = (),
    returning: Sequence[Any] = (),
) -> Row[Any] | None:
    """The ``claim`` transition with ``attempt + 1``, in one conditional UPDATE (plus the conditions
    ``where``); the row ``(id, tenant_id, attempt, started_at, *returning)``, or None when the job is not
    claimable (a duplicate delivery, cancelled meanwhile) or does not exist."""
    now = now or utcnow()
    statement = (
        update(model)
        .where(model.id == job_id, model.status.in_(machine.sources(Trigger.CLAIM)), *where)
        .values(
            status=machine.target(Trigger.CLAIM),
            attempt=model.attempt + 1,
            worker_id=worker_id,
            # A job queued again after an interruption keeps the time it first started.
            started_at=func.coalesce(model.started_at, now),
            heartbeat_at=now,
            error=None,
        )
        .returning(model.id, model.tenant_id, model.attempt, model.started_at, *returning)
        .execution_options(synchronize_session=False)
    )
    return session.execute(statement).one_or_none()


def held(model: type[J], machine: StateMachine[Any], job_id: str, attempt: int) -> tuple[Any, ...]:
    """The WHERE of a write by the attempt that holds the job: its id, its attempt, a held status."""
    return (model.id == job_id, model.attempt == attempt, model.status.in_(machine.held))


def transition_held(
    session: Session,
    model: type[J],
    machine: StateMachine[Any],
    job_id: str,
    attempt: int,
    trigger: Trigger,
    **values: Any,
) -> bool:
    """Make ``trigger``'s transition (writing ``values`` with it) if this attempt still holds the job in
    one of the trigger's source statuses; whether it did."""
    status = machine.target(trigger)
    statement = (
        update(model)
        .where(*held(model, machine, job_id, attempt), model.status.in_(machine.sources(trigger)))
        .values(status=status, **values)
        .execution_options(synchronize_session=False)
    )
    if session.execute(statement).rowcount == 0:  # type: ignore[attr-defined]
        return False
    if status in machine.terminal:
        # The row as the UPDATE left it (not a stale copy of this session's), for its webhook events.
        job = session.get(model, job_id, populate_existing=True)
        assert job is not None
        record_ended(session, job)
    return True


def set_status(
    session: Session, job: J, machine: StateMachine[Any], status: Any, *, now: datetime | None = None
) -> None:
    """Move ``job``, loaded and locked by the caller, to ``status``: a transition the caller looked up in
    ``machine`` (the API's cancel, the reapers), or the status a job is created in. When it ends the job,
    ``finished_at`` is set (``now``) and its webhook events are written, in the caller's transaction
    (:func:`app.webhooks.outbox.record_ended`), after what the caller wrote to the job before."""
    job.status = status
    if status in machine.terminal:
        job.finished_at = now or utcnow()
        session.flush()
        record_ended(session, job)


def renew(
    session: Session,
    model: type[J],
    machine: StateMachine[Any],
    job_id: str,
    attempt: int,
    *,
    returning: Sequence[Any],
    now: datetime | None = None,
    **values: Any,
) -> Row[Any] | None:
    """Refresh the lease (``heartbeat_at``) of the attempt that holds the job, writing ``values`` with it,
    and read back ``returning``: one round trip. None when this attempt no longer holds the job."""
    statement = (
        update(model)
        .where(*held(model, machine, job_id, attempt))
        .values(heartbeat_at=now or utcnow(), **values)
        .returning(*returning)
        .execution_options(synchronize_session=False)
    )
    return session.execute(statement).one_or_none()


def stale_unclaimed(
    session: Session, model: type[J], statuses: Collection[enum.StrEnum], cutoff: datetime, *, limit: int
) -> list[J]:
    """Jobs in ``statuses`` (waiting for a worker) last sent (``sent_at``, else ``created_at``) before
    ``cutoff``, oldest first, locked; rows another transaction holds are skipped."""
    last_sent = func.coalesce(model.sent_at, model.created_at)
    statement = (
        select(model)
        .where(model.status.in_(statuses), last_sent < cutoff)
        .order_by(last_sent)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(session.scalars(statement))


def expired_leases(
    session: Session, model: type[J], statuses: Collection[enum.StrEnum], cutoff: datetime, *, limit: int
) -> list[J]:
    """Jobs held by a worker (``statuses``) whose heartbeat is older than ``cutoff``, oldest first, locked;
    rows another transaction holds (a heartbeat being written, another reaper) are skipped."""
    statement = (
        select(model)
        .where(model.status.in_(statuses), model.heartbeat_at < cutoff)
        .order_by(model.heartbeat_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(session.scalars(statement))


def resend_stale_queued(
    session: Session,
    model: type[J],
    machine: StateMachine[Any],
    *,
    older_than: timedelta,
    enqueue: Enqueuer,
    limit: int = 100,
) -> list[str]:
    """Send again the task of every job still queued ``older_than`` after its last send (its submission,
    or this function's previous send), and return their ids.

    The API sends a job's task once, after the commit; if that send failed (the broker was unreachable),
    or the message was lost, the job would stay queued for ever. Sending again is always safe: a worker
    claims a job with one conditional UPDATE, so a duplicate message does nothing. Rows are taken with
    ``SKIP LOCKED`` (several workers sweep at once without sending twice) and sent before the commit: a
    failed send leaves ``sent_at`` as it was, to be tried at the next sweep.
    """
    jobs = stale_unclaimed(session, model, machine.sources(Trigger.CLAIM), utcnow() - older_than, limit=limit)
    for job in jobs:
        enqueue(job.id)
        job.sent_at = utcnow()
    session.flush()
    return [job.id for job in jobs]
