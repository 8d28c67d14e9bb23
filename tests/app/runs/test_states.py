"""The run state machine: the table itself, and every (status, trigger) pair walked through the code that
carries the trigger out, against PostgreSQL: the status it leaves is the table's, or unchanged."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
from sqlalchemy.orm import Session

from app.errors import Conflict
from app.models import Corpus, Run, Tenant
from app.runs import lifecycle, service
from app.runs.live import LivePublisher
from app.runs.states import (
    ACTIVE_RUN_STATUSES,
    TERMINAL_RUN_STATUSES,
    TRANSITIONS,
    WORKER_HELD_STATUSES,
    Actor,
    RunStatus,
    Trigger,
    sources,
    target,
    transition,
)
from app.storage import LocalStorage
from tests.support import TenantKey, make_run, write_complete_checkpoint

ATTEMPT = 3


def _claim(session: Session, tenant: Tenant, run: Run, storage: LocalStorage) -> None:
    lifecycle.claim_run(session, run.id, "worker-1")


def _start_training(session: Session, tenant: Tenant, run: Run, storage: LocalStorage) -> None:
    lifecycle.mark_running(session, run.id, ATTEMPT)


def _cancel(session: Session, tenant: Tenant, run: Run, storage: LocalStorage) -> None:
    service.cancel_run(session, tenant, run.id, publisher=LivePublisher(None))


def _retry(session: Session, tenant: Tenant, run: Run, storage: LocalStorage) -> None:
    lifecycle.retry_run(session, run.id, ATTEMPT)


def _resume(session: Session, tenant: Tenant, run: Run, storage: LocalStorage) -> None:
    """The owner's resume of a run that kept a checkpoint and whose corpus is still there."""
    corpus = Corpus(id=f"corp_{run.id}", tenant_id=tenant.id, name="c", filename="c.txt", storage_key="k",
                    bytes=1, sha256="0" * 64, documents=3, sentences=9)  # fmt: skip
    session.add(corpus)
    run.corpus_id = corpus.id
    write_complete_checkpoint(storage, run.id, 10)
    with contextlib.suppress(Conflict):  # a run the trigger does not move
        service.resume_run(
            session, storage, tenant, run.id, enqueue=lambda run_id: None, publisher=LivePublisher(None)
        )


def _ending(trigger: Trigger) -> Callable[[Session, Tenant, Run, LocalStorage], None]:
    def end(session: Session, tenant: Tenant, run: Run, storage: LocalStorage) -> None:
        lifecycle.finish_run(session, run.id, ATTEMPT, trigger)

    return end


# What carries each trigger out: the API's cancel, the worker's conditional updates.
CARRY_OUT: dict[Trigger, Callable[[Session, Tenant, Run, LocalStorage], None]] = {
    Trigger.CLAIM: _claim,
    Trigger.START_TRAINING: _start_training,
    Trigger.CANCEL: _cancel,
    Trigger.SUCCEED: _ending(Trigger.SUCCEED),
    Trigger.FAIL: _ending(Trigger.FAIL),
    Trigger.STOP: _ending(Trigger.STOP),
    Trigger.RETRY: _retry,
    Trigger.RESUME: _resume,
}


def test_every_trigger_is_carried_out_somewhere() -> None:
    assert set(CARRY_OUT) == set(Trigger)


@pytest.mark.parametrize("trigger", list(Trigger))
@pytest.mark.parametrize("status", list(RunStatus))
def test_the_code_follows_the_table(
    session: Session, alice: TenantKey, storage: LocalStorage, status: RunStatus, trigger: Trigger
) -> None:
    run = make_run(session, alice.tenant, status=status, attempt=ATTEMPT)
    CARRY_OUT[trigger](session, alice.tenant, run, storage)
    session.commit()
    session.refresh(run)
    expected = transition(status, trigger)
    assert run.status == (expected.target if expected else status), (status, trigger)


def test_derived_sets() -> None:
    assert {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED} == TERMINAL_RUN_STATUSES
    assert {
        RunStatus.QUEUED,
        RunStatus.PREPARING,
        RunStatus.RUNNING,
        RunStatus.CANCELLING,
    } == ACTIVE_RUN_STATUSES
    assert {RunStatus.PREPARING, RunStatus.RUNNING, RunStatus.CANCELLING} == WORKER_HELD_STATUSES
    assert sources(Trigger.CLAIM) == {RunStatus.QUEUED} and target(Trigger.CLAIM) == RunStatus.PREPARING
    with pytest.raises(ValueError, match="by its source"):
        target(Trigger.CANCEL)  # queued -> cancelled, running -> cancelling


def test_the_graph_has_no_dead_ends() -> None:
    """Every status is reachable from queued, and from every status a run can still end."""
    reachable, frontier = {RunStatus.QUEUED}, [RunStatus.QUEUED]
    while frontier:
        status = frontier.pop()
        for step in TRANSITIONS:
            if step.source == status and step.target not in reachable:
                reachable.add(step.target)
                frontier.append(step.target)
    assert reachable == set(RunStatus)
    for status in ACTIVE_RUN_STATUSES:
        assert any(transition(status, t) for t in (Trigger.CANCEL, Trigger.FAIL)), status
    # Each (source, trigger) has one target; clients cancel and resume, everything else is the worker's,
    # and the reaper acts for a worker that is gone (but never claims, starts or completes a run).
    assert len({(t.source, t.trigger) for t in TRANSITIONS}) == len(TRANSITIONS)
    assert {t.trigger for t in TRANSITIONS if Actor.CLIENT in t.actors} == {Trigger.CANCEL, Trigger.RESUME}
    assert {t.trigger for t in TRANSITIONS if Actor.REAPER in t.actors} == {
        Trigger.FAIL,
        Trigger.STOP,
        Trigger.RETRY,
    }
    assert all(
        t.actors == {Actor.CLIENT} for t in TRANSITIONS if t.trigger in (Trigger.CANCEL, Trigger.RESUME)
    )
