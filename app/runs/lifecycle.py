"""The worker's writes to a run: the sweep of runs left queued, claim, progress and heartbeat, metrics,
checkpoints, retry, finish; and the reaper's, for runs whose holder stopped answering. Every status change
is a transition of :mod:`app.runs.states`.

Repository-style functions on a caller's Session; the caller's boundary (``session_scope``) commits.
Every write after the claim is fenced by the run's ``attempt``: a supervisor whose run was taken away
(requeued by an operator or a reaper, claimed again by another worker) changes nothing any more, and
learns it from the return value.

Delivery of the Celery task is at least once, so the claim is one conditional UPDATE: of two deliveries
of the same run, exactly one moves it from ``queued`` to ``preparing``; the other (and any delivery for a
run cancelled while it waited) gets None and does nothing.

The heartbeat is the attempt's lease. A run whose heartbeat is older than ``HEARTBEAT_TIMEOUT_SECONDS``
has lost its holder (the worker was killed, or cannot reach the database): :func:`reap_expired` takes it
back. Because every write of the old attempt is fenced by ``attempt`` and a held status, the old holder
changes nothing once the run is queued again, even if it comes back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.jobs import leases
from app.jobs.leases import Heartbeat
from app.models import Run, RunCheckpoint, RunMetric, utcnow
from app.queue import RunEnqueuer
from app.runs.events import EventLevel, RunEventType, add_event
from app.runs.live import StatusMessage
from app.runs.schemas import RunError, RunEventPublic, RunProgress
from app.runs.states import RUN_STATES, WORKER_HELD_STATUSES, RunStatus, Trigger, target
from app.storage import Storage
from app.storage.keys import run_checkpoints_key
from worker.pretraining.layout import checkpoint_step
from worker.pretraining.records import MetricsRecord
from worker.pretraining.run_checkpoints import is_complete_checkpoint

__all__ = [
    "ENDING_TRIGGERS",
    "ClaimedRun",
    "Heartbeat",
    "Interruption",
    "Reaped",
    "attempt_of",
    "claim_run",
    "finish_run",
    "forget_checkpoints",
    "heartbeat",
    "mark_running",
    "metric_rows",
    "newest_checkpoint_step",
    "reap_expired",
    "record_checkpoint",
    "resend_stale_queued",
    "retry_allowed",
    "retry_run",
    "rewind",
    "write_metrics",
]

# What ends a run a worker holds.
ENDING_TRIGGERS = (Trigger.SUCCEED, Trigger.FAIL, Trigger.STOP)
_METRICS_PER_STATEMENT = 1000  # rows of one INSERT (PostgreSQL caps bind parameters at 65535)


@dataclass(frozen=True)
class ClaimedRun:
    """What the claim returned: the run's identity and the fencing ``attempt`` for every later write."""

    id: str
    tenant_id: str
    attempt: int
    worker_id: str
    started_at: datetime | None
    resumed_after_attempt: int = 0


def resend_stale_queued(
    session: Session, *, older_than: timedelta, enqueue: RunEnqueuer, limit: int = 100
) -> list[str]:
    """Send again the task of every run still queued ``older_than`` after its last send (its submission,
    or this function's previous send), and return their ids: a send that failed or a message that was
    lost would leave it queued for ever. Why this is safe, and how several sweepers share the rows:
    :func:`app.jobs.leases.resend_stale_queued`.
    """
    return leases.resend_stale_queued(
        session, Run, RUN_STATES, older_than=older_than, enqueue=enqueue, limit=limit
    )


def claim_run(
    session: Session, run_id: str, worker_id: str, *, now: datetime | None = None
) -> ClaimedRun | None:
    """The ``claim`` transition (``queued -> preparing``) with ``attempt + 1``, in one conditional UPDATE;
    None when the run is not queued (a duplicate delivery, or cancelled meanwhile) or does not exist."""
    row = leases.claim(
        session,
        Run,
        RUN_STATES,
        run_id,
        worker_id,
        now=now,
        where=(Run.cancel_requested.is_(False),),
        returning=(Run.resumed_after_attempt,),
    )
    if row is None:
        return None
    return ClaimedRun(
        id=row.id,
        tenant_id=row.tenant_id,
        attempt=row.attempt,
        worker_id=worker_id,
        started_at=row.started_at,
        resumed_after_attempt=row.resumed_after_attempt,
    )


def retry_allowed(attempt: int, resumed_after_attempt: int, max_attempts: int) -> bool:
    """Whether an interrupted ``attempt`` may be followed by another one: at most ``max_attempts`` since
    the run was submitted or its owner last resumed it."""
    return attempt - resumed_after_attempt < max_attempts


def attempt_of(attempt: int, resumed_after_attempt: int, max_attempts: int) -> str:
    """``"attempt 2 of 3"``; after a resume by the owner, ``"attempt 5 (2 of 3 since its owner resumed
    it)"``: the number is always the run's ``attempt`` (as its ``claimed`` events say), and the share of
    ``max_attempts`` is counted from the submission or the last resume."""
    if resumed_after_attempt == 0:
        return f"attempt {attempt} of {max_attempts}"
    since = attempt - resumed_after_attempt
    return f"attempt {attempt} ({since} of {max_attempts} since its owner resumed it)"


def retry_run(
    session: Session,
    run_id: str,
    attempt: int,
    *,
    progress: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> bool:
    """The ``retry`` transition (``preparing | running -> queued``) of an interrupted attempt that still
    holds the run: the next claim (attempt + 1) resumes it from its newest complete checkpoint. The caller
    sends the task after the commit; ``sent_at`` is set so that the sweep of queued runs does not send it
    again meanwhile; ``progress``, when given, is written with it. False when this attempt no longer
    holds the run, or it is cancelling."""
    now = now or utcnow()
    values = _given(progress=progress)
    return _transition_held(
        session, run_id, attempt, Trigger.RETRY, sent_at=now, heartbeat_at=now, error=None, **values
    )


def rewind(session: Session, run_id: str, after_step: int | None) -> None:
    """Supersede what an interrupted attempt recorded past ``after_step``, the step the next attempt
    resumes from (None: it starts again from the beginning): its metric points and checkpoint rows. The
    caller holds the run (it wrote the heartbeat in the same transaction)."""
    first_dropped = 0 if after_step is None else after_step + 1
    session.execute(delete(RunMetric).where(RunMetric.run_id == run_id, RunMetric.step >= first_dropped))
    session.execute(
        delete(RunCheckpoint).where(RunCheckpoint.run_id == run_id, RunCheckpoint.step >= first_dropped)
    )


def _transition_held(session: Session, run_id: str, attempt: int, trigger: Trigger, **values: Any) -> bool:
    """Make ``trigger``'s transition if this attempt still holds the run in one of its source statuses;
    whether it did."""
    return leases.transition_held(session, Run, RUN_STATES, run_id, attempt, trigger, **values)


def _given(**fields: Any) -> dict[str, Any]:
    """The fields that were given (not None)."""
    return {name: value for name, value in fields.items() if value is not None}


def heartbeat(
    session: Session,
    run_id: str,
    attempt: int,
    *,
    now: datetime | None = None,
    progress: Mapping[str, Any] | None = None,
    latest: Mapping[str, Any] | None = None,
    baseline: Mapping[str, Any] | None = None,
    warnings: Sequence[Mapping[str, Any]] | None = None,
) -> Heartbeat[RunStatus]:
    """Refresh ``heartbeat_at`` (and whichever of progress, latest, baseline, warnings is given) and read
    back ``cancel_requested``: one round trip, about once a second while a run trains."""
    given = _given(progress=progress, latest=latest, baseline=baseline, warnings=warnings)
    returning = (Run.cancel_requested, Run.status)
    row = leases.renew(session, Run, RUN_STATES, run_id, attempt, returning=returning, now=now, **given)
    if row is None:
        return Heartbeat(owned=False)
    return Heartbeat(owned=True, cancel_requested=bool(row.cancel_requested), status=RunStatus(row.status))


def mark_running(session: Session, run_id: str, attempt: int) -> bool:
    """The ``start_training`` transition (``preparing -> running``). False if the run is not preparing any
    more (a cancel request already moved it to ``cancelling``, which it keeps)."""
    return _transition_held(session, run_id, attempt, Trigger.START_TRAINING, heartbeat_at=utcnow())


def finish_run(
    session: Session,
    run_id: str,
    attempt: int,
    trigger: Trigger,
    *,
    error: Mapping[str, Any] | None = None,
    output_storage_key: str | None = None,
    progress: Mapping[str, Any] | None = None,
    latest: Mapping[str, Any] | None = None,
    baseline: Mapping[str, Any] | None = None,
    warnings: Sequence[Mapping[str, Any]] | None = None,
    now: datetime | None = None,
) -> bool:
    """A transition that ends the run (``succeed``, ``fail`` or ``stop``: succeeded, failed or
    cancelled), with what the run leaves behind (its warnings too: a run may end before any heartbeat
    wrote them). False when this attempt no longer holds the run (nothing
    is written)."""
    if trigger not in ENDING_TRIGGERS:
        raise ValueError(f"finish_run ends a run ({', '.join(ENDING_TRIGGERS)}), not {trigger.value!r}")
    now = now or utcnow()
    values: dict[str, Any] = {"finished_at": now, "heartbeat_at": now}
    values["error"] = dict(error) if error is not None else None
    if output_storage_key is not None:
        values["output_storage_key"] = output_storage_key
    values.update(_given(progress=progress, latest=latest, baseline=baseline, warnings=warnings))
    return _transition_held(session, run_id, attempt, trigger, **values)


def metric_rows(run_id: str, record: MetricsRecord) -> list[dict[str, Any]]:
    """The ``run_metrics`` rows of one metrics record: its finite values (a NaN or infinite value has no
    row; the record on the live stream shows it as null)."""
    return [
        {"run_id": run_id, "split": record.split, "name": name, "step": record.step, "value": value}
        for name, value in record.metrics.values().items()
        if math.isfinite(value)
    ]


def write_metrics(session: Session, run_id: str, records: Iterable[MetricsRecord]) -> int:
    """Insert the points of ``records`` with ``ON CONFLICT DO NOTHING`` on (run, split, name, step): a
    batch written again (a retried flush, a resumed attempt replaying steps) adds nothing. Returns the
    number of rows offered."""
    rows = [row for record in records for row in metric_rows(run_id, record)]
    if not rows:
        return 0
    insert = _dialect_insert(session)
    for start in range(0, len(rows), _METRICS_PER_STATEMENT):
        statement = insert(RunMetric).values(rows[start : start + _METRICS_PER_STATEMENT])
        session.execute(statement.on_conflict_do_nothing(index_elements=["run_id", "split", "name", "step"]))
    return len(rows)


def record_checkpoint(
    session: Session,
    run_id: str,
    step: int,
    *,
    metrics: Mapping[str, Any],
    size_bytes: int,
    sha256: str,
    storage_key: str,
    created_at: datetime | None = None,
) -> None:
    """A kept checkpoint. Written again for the same step (a resumed attempt saving it anew), the row
    takes the new files' size and digest."""
    values = {
        "run_id": run_id,
        "step": step,
        "created_at": created_at or utcnow(),
        "metrics": dict(metrics),
        "size_bytes": size_bytes,
        "sha256": sha256,
        "storage_key": storage_key,
    }
    statement = _dialect_insert(session)(RunCheckpoint).values(values)
    updated = {
        name: statement.excluded[name]
        for name in ("created_at", "metrics", "size_bytes", "sha256", "storage_key")
    }
    session.execute(statement.on_conflict_do_update(index_elements=["run_id", "step"], set_=updated))


def forget_checkpoints(session: Session, run_id: str, kept_steps: Iterable[int]) -> list[int]:
    """Delete the rows of checkpoints that training rotated away (only ``kept_steps`` remain on disk);
    returns the steps forgotten."""
    kept = set(kept_steps)
    steps = session.scalars(select(RunCheckpoint.step).where(RunCheckpoint.run_id == run_id)).all()
    gone = sorted(step for step in steps if step not in kept)
    if gone:
        session.execute(
            delete(RunCheckpoint).where(RunCheckpoint.run_id == run_id, RunCheckpoint.step.in_(gone))
        )
    return gone


@dataclass(frozen=True)
class Reaped:
    """A run the reaper took back: its new status, and what to publish once that is committed."""

    run_id: str
    status: RunStatus
    messages: tuple[RunEventPublic | StatusMessage, ...]


def newest_checkpoint_step(storage: Storage, run_id: str) -> int | None:
    """The step of the run's newest complete checkpoint in the storage, what its next attempt resumes
    from (None: it starts from the beginning). Read from the files, not the rows: a training process
    killed just after publishing a checkpoint never sent the message that makes its row. Read from a
    listing of the storage (S3 has no directories to look into)."""
    found: dict[int, set[str]] = {}
    for file in storage.list_files(run_checkpoints_key(run_id)):
        directory, _, name = file.name.partition("/")
        step = checkpoint_step(directory)
        if step is not None:
            found.setdefault(step, set()).add(name)
    complete = [step for step, names in found.items() if is_complete_checkpoint(names)]
    return max(complete, default=None)


def reap_expired(
    session: Session,
    storage: Storage,
    *,
    timeout: timedelta,
    max_attempts: int,
    now: datetime | None = None,
    limit: int = 100,
) -> list[Reaped]:
    """Take back every run whose holder's heartbeat is older than ``timeout``: a run in ``cancelling`` is
    cancelled (``stop``); another is queued again (``retry``) while attempts are left, else failed
    (``fail``, error type ``worker_lost``). Rows are taken with ``SKIP LOCKED`` (several reapers at once
    never act twice) and their holder's late writes are fenced off by the new status. The caller sends the
    task of every run back in ``queued`` and publishes the messages, after the commit."""
    now = now or utcnow()
    reaped = []
    for run in leases.expired_leases(session, Run, WORKER_HELD_STATUSES, now - timeout, limit=limit):
        silent = (now - run.heartbeat_at).total_seconds() if run.heartbeat_at else None
        lost = f"worker {run.worker_id or 'unknown'} stopped answering" + (
            f" (no heartbeat for {silent:,.0f} s)" if silent else ""
        )
        step = newest_checkpoint_step(storage, run.id)
        data: dict[str, Any] = {
            "worker_id": run.worker_id,
            "attempt": run.attempt,
            "heartbeat_at": run.heartbeat_at.isoformat() if run.heartbeat_at else None,
            "checkpoint_step": step,
        }
        level: EventLevel
        interrupted = Interruption(
            run.id,
            run.attempt,
            run.resumed_after_attempt,
            max_attempts,
            (run.progress or {}).get("step"),
            step,
        )
        error = None
        if run.status == RunStatus.CANCELLING:
            trigger, event_type, level = Trigger.STOP, RunEventType.CANCELLED, "info"
            message = interrupted.cancelled(lost)
        elif interrupted.retried:
            trigger, event_type, level = Trigger.RETRY, RunEventType.RETRYING, "warning"
            message = interrupted.message(lost)
            run.sent_at = now
        else:
            trigger, event_type, level = Trigger.FAIL, RunEventType.FAILED, "error"
            message = interrupted.message(lost)
            error = {"type": "worker_lost", "message": message, "checkpoint_step": step}
        run.error = error
        run.progress = {**(run.progress or {}), "eta_seconds": None}  # nothing is training it now
        leases.set_status(session, run, RUN_STATES, target(trigger), now=now)  # ended: its webhook events
        event = add_event(
            session, run.id, event_type, message, level=level, data={**data, "trigger": trigger}
        )
        status = StatusMessage(
            status=run.status,
            progress=RunProgress.model_validate(run.progress or {}),
            error=RunError.model_validate(error) if error else None,
        )
        reaped.append(Reaped(run.id, run.status, (RunEventPublic.model_validate(event), status)))
    session.flush()
    return reaped


@dataclass(frozen=True)
class Interruption:
    """An attempt interrupted by something that is not its owner's doing, and what it leads to: the next
    attempt while attempts are left (``retried``), else the run fails. Its messages say which attempt it
    was, where it stopped and what continues from where, for the worker and the reaper alike."""

    run_id: str
    attempt: int
    resumed_after_attempt: int
    max_attempts: int
    after_step: int | None  # the last step it reported
    checkpoint_step: int | None  # its newest complete checkpoint

    @property
    def retried(self) -> bool:
        return retry_allowed(self.attempt, self.resumed_after_attempt, self.max_attempts)

    def message(self, cause: str) -> str:
        """``"attempt 1 of 3 was interrupted after step 12: <cause>; attempt 2 of 3 resumes from the
        checkpoint of step 10"``, or for the last attempt how its owner resumes the run."""
        this = attempt_of(self.attempt, self.resumed_after_attempt, self.max_attempts)
        where = f" after step {self.after_step}" if self.after_step else ""
        cause = cause.rstrip(".")
        if self.retried:
            following = attempt_of(self.attempt + 1, self.resumed_after_attempt, self.max_attempts)
            if self.checkpoint_step is None:
                then = f"{following} starts again from the beginning (no checkpoint was saved yet)"
            else:
                then = f"{following} resumes from the checkpoint of step {self.checkpoint_step}"
            return f"{this} was interrupted{where}: {cause}; {then}"
        if self.checkpoint_step is None:
            then = "no checkpoint was saved, so nothing can be resumed: submit the run again"
        else:
            then = (
                f"its last checkpoint (step {self.checkpoint_step}) is kept: "
                f"POST /v1/runs/{self.run_id}/resume continues from it"
            )
        return f"{this}, the last, was interrupted{where}: {cause}; {then}"

    def cancelled(self, cause: str) -> str:
        """The run was being cancelled: it ends cancelled, whatever interrupted it."""
        kept = (
            f"; the checkpoint of step {self.checkpoint_step} is kept"
            if self.checkpoint_step is not None
            else ""
        )
        return f"cancelled: while it was stopping, {cause.rstrip('.')}{kept}"


def _dialect_insert(session: Session) -> Any:
    """The INSERT construct with ``ON CONFLICT`` of the session's database."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        return postgresql_insert
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert
    raise RuntimeError(f"bertpt supports PostgreSQL and SQLite databases, not {dialect!r}")
