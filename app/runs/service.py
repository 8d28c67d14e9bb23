"""Runs as the API sees them: queries, cancellation, deletion, events and checkpoints.

Submission is :mod:`app.runs.submission`, downloads :mod:`app.runs.downloads`, metric curves
:mod:`app.runs.metric_series`; the worker's side is :mod:`app.runs.lifecycle`. Services never commit:
side effects that need the rows to be durable (deleting files, publishing on the live stream) are
registered with :func:`~app.db.on_commit`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy.orm import Session

from app.base_models.service import final_model_key
from app.base_models.spec import BaseModelSpec
from app.db import on_commit, session_scope
from app.errors import Conflict, NotFound
from app.evaluations import repository as evaluations_repository
from app.jobs import leases
from app.models import Run, RunCheckpoint, RunEvent, Tenant, utcnow
from app.pagination import Page, decode_id_cursor
from app.queue import RunEnqueuer
from app.runs import repository
from app.runs.events import RunEventType, add_event
from app.runs.lifecycle import newest_checkpoint_step
from app.runs.live import LivePublisher, StatusMessage
from app.runs.schemas import RunEventPublic, RunProgress
from app.runs.states import RUN_STATES, RunStatus, Trigger, transition
from app.storage import Storage
from app.storage.keys import run_directory_key

__all__ = [
    "cancel_run",
    "delete_run",
    "get_run",
    "list_checkpoints",
    "list_events",
    "list_runs",
    "resume_run",
    "run_is_terminal",
]


def get_run(session: Session, tenant: Tenant, run_id: str, *, for_update: bool = False) -> Run:
    run = repository.get(session, tenant.id, run_id, for_update=for_update)
    if run is None:
        raise NotFound("run", run_id)
    return run


def list_runs(
    session: Session, tenant: Tenant, *, statuses: Sequence[RunStatus], limit: int, after: str | None
) -> Page[Run]:
    return repository.page(session, tenant.id, statuses=statuses, limit=limit, after=after)


def run_is_terminal(session_factory: Callable[[], Session], run_id: str) -> bool:
    """Whether the run has ended (or is gone), in a short transaction of its own."""
    with session_scope(session_factory) as session:
        status = repository.status_of(session, run_id)
    return status is None or status.is_terminal


def cancel_run(session: Session, tenant: Tenant, run_id: str, *, publisher: LivePublisher) -> Run:
    """Cancel a run; idempotent. Its ``cancel`` transition: a queued run is cancelled at once (the
    worker's claim only takes queued runs, and waits on this row lock); a preparing or running one is asked
    to stop and becomes ``cancelling`` until the worker has saved a checkpoint and stopped; a run the
    trigger does not move (cancelling already, or finished) is returned as is."""
    run = get_run(session, tenant, run_id, for_update=True)
    step = transition(run.status, Trigger.CANCEL)
    if step is None:
        return run
    run.cancel_requested = True
    leases.set_status(session, run, RUN_STATES, step.target)  # cancelled: its webhook events with it
    if step.target.is_terminal:
        event = add_event(
            session,
            run.id,
            RunEventType.CANCELLED,
            "cancelled before it started",
            data={"previous": step.source.value},
        )
    else:
        event = add_event(
            session,
            run.id,
            RunEventType.CANCEL_REQUESTED,
            "cancellation requested: the run stops after its current step and saves a checkpoint",
            data={"previous": step.source.value},
        )
    session.flush()
    messages = (
        RunEventPublic.model_validate(event),
        StatusMessage(status=run.status, progress=RunProgress.model_validate(run.progress or {})),
    )

    def announce() -> None:
        for message in messages:
            publisher.publish(run_id, message)

    on_commit(session, announce)
    return run


def resume_run(
    session: Session,
    storage: Storage,
    tenant: Tenant,
    run_id: str,
    *,
    enqueue: RunEnqueuer,
    publisher: LivePublisher,
) -> Run:
    """Continue a failed or cancelled run from its newest kept checkpoint (its ``resume`` transition):
    queued again with the same id, hyperparameters and output directory, so that the next attempt
    restores the weights, optimizer, scheduler and data position exactly, and gets ``MAX_ATTEMPTS``
    attempts of its own. Its task is sent once that is committed.

    Raises Conflict when the run is in another status, has no checkpoint, or its corpus is gone."""
    run = get_run(session, tenant, run_id, for_update=True)
    step = transition(run.status, Trigger.RESUME)
    if step is None:
        what = "finished" if run.status == RunStatus.SUCCEEDED else "not finished"
        raise Conflict(
            f"run {run.id!r} is {run.status.value} ({what}); only a failed or cancelled run can be resumed"
        )
    checkpoint_step = newest_checkpoint_step(storage, run.id)
    if checkpoint_step is None:
        raise Conflict(
            f"run {run.id!r} kept no checkpoint, so there is nothing to resume from; submit it again "
            "(POST /v1/runs with the same body)"
        )
    # A corpus deleted after the run ended leaves NULL in its column; what the run trained with is in the
    # data of its ``preparing`` event.
    inputs = repository.last_event_data(session, run.id, RunEventType.PREPARING)
    deleted = [
        f"{role} {inputs.get(field) or ''}".strip()
        for role, field, now in (
            ("corpus", "corpus_id", run.corpus_id),
            ("eval corpus", "eval_corpus_id", run.eval_corpus_id),
            ("reference corpus", "reference_corpus_id", run.reference_corpus_id),
            ("replay corpus", "replay_corpus_id", run.replay_corpus_id),
        )
        if now is None and (inputs.get(field) or field == "corpus_id")
    ]
    if deleted:
        raise Conflict(
            f"run {run.id!r} cannot be resumed: its {' and '.join(deleted)} "
            f"{'was' if len(deleted) == 1 else 'were'} deleted; submit a new run"
        )
    previous = run.status
    run.status = step.target
    run.resumed_after_attempt = run.attempt
    run.cancel_requested = False
    run.error = None
    run.finished_at = None
    run.sent_at = utcnow()
    run.progress = {**(run.progress or {}), "eta_seconds": None}
    event = add_event(
        session,
        run.id,
        RunEventType.RESUMED,
        f"resumed by its owner: the next attempt continues from the checkpoint of step {checkpoint_step}",
        data={"previous": previous.value, "checkpoint_step": checkpoint_step, "attempt": run.attempt},
    )
    session.flush()
    messages = (
        RunEventPublic.model_validate(event),
        StatusMessage(status=run.status, progress=RunProgress.model_validate(run.progress)),
    )

    def send() -> None:
        for message in messages:
            publisher.publish(run_id, message)
        enqueue(run_id)

    on_commit(session, send)
    return run


def delete_run(session: Session, storage: Storage, tenant: Tenant, run_id: str) -> None:
    """Delete a finished run with its metrics, events and checkpoints now, and its files once that is
    committed. Conflict while it is not finished, or while an active run starts from its model."""
    run = get_run(session, tenant, run_id, for_update=True)
    if not run.status.is_terminal:
        raise Conflict(
            f"run {run.id!r} is {run.status.value}; only a finished run can be deleted (cancel it first: "
            f"POST /v1/runs/{run.id}/cancel)"
        )
    users = repository.active_runs_based_on(session, tenant.id, run.id)
    if users:
        raise Conflict(
            f"run {run.id!r} is the base model of active run(s) {', '.join(users[:5])}; cancel them or wait "
            "for them to finish, then delete it"
        )
    evaluations = evaluations_repository.active_using_model(
        session, tenant.id, str(BaseModelSpec.run(run.id)), prefix=BaseModelSpec.run_step_prefix(run.id)
    )
    if evaluations:
        raise Conflict(
            f"run {run.id!r} is compared by active evaluation(s) {', '.join(evaluations[:5])}; cancel them "
            "or wait for them to finish, then delete it"
        )
    keys = _outermost(
        {
            run_directory_key(run.id),
            final_model_key(run),
            *(c.storage_key for c in repository.checkpoints(session, run.id)),
        }
    )
    repository.delete(session, run)

    def remove_files() -> None:
        for key in keys:
            storage.delete(key)

    on_commit(session, remove_files)


def _outermost(keys: set[str]) -> list[str]:
    """The keys not inside another one (deleting a directory deletes what it holds)."""
    return sorted(key for key in keys if not any(key.startswith(f"{other}/") for other in keys))


def list_events(
    session: Session, tenant: Tenant, run_id: str, *, after: str | None, limit: int
) -> Page[RunEvent]:
    """The run's events after the cursor ``after`` (an event id), oldest first."""
    run = get_run(session, tenant, run_id)
    after_id = decode_id_cursor(after) if after is not None else None
    events = list(repository.events_after(session, run.id, after=after_id, limit=limit + 1))
    items = events[:limit]
    return Page(items=items, next_cursor=str(items[-1].id) if len(events) > limit else None)


def list_checkpoints(session: Session, tenant: Tenant, run_id: str) -> Sequence[RunCheckpoint]:
    run = get_run(session, tenant, run_id)
    return repository.checkpoints(session, run.id)
