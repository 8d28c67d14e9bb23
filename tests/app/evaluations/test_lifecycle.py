"""The evaluation state machine, walked through the code that carries each trigger out (against
PostgreSQL); the worker's fenced writes; and the housekeeping's: the reaper and the re-send of
evaluations left queued, as the Housekeeper runs them."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.evaluations import lifecycle, service
from app.evaluations.states import (
    ACTIVE_EVALUATION_STATUSES,
    EVALUATION_STATES,
    TERMINAL_EVALUATION_STATUSES,
    EvaluationStatus,
)
from app.housekeeping import Housekeeper
from app.jobs.states import Actor, Trigger
from app.models import Evaluation, Tenant, utcnow
from app.runs.live import LivePublisher
from app.storage import LocalStorage
from tests.support import TenantKey

ATTEMPT = 2


def make_evaluation(session: Session, tenant: Tenant, **values: Any) -> Evaluation:
    """An evaluation row inserted directly, committed (no dataset: the column is nullable)."""
    evaluation = Evaluation(
        id=f"eval_{secrets.token_urlsafe(18)}",
        tenant_id=tenant.id,
        models=["minilm-l6-h384-uncased"],
        resolved_models=[{"spec": "minilm-l6-h384-uncased", "kind": "builtin"}],
        method="probe",
        seeds=2,
        hyperparameters={},
        progress={},
        **{"status": EvaluationStatus.QUEUED, **values},
    )
    session.add(evaluation)
    session.commit()
    return evaluation


def _ending(trigger: Trigger) -> Callable[[Session, Tenant, Evaluation], None]:
    def end(session: Session, tenant: Tenant, evaluation: Evaluation) -> None:
        lifecycle.finish_evaluation(session, evaluation.id, ATTEMPT, trigger)

    return end


# What carries each trigger out: the API's cancel, the worker's conditional updates.
CARRY_OUT: dict[Trigger, Callable[[Session, Tenant, Evaluation], None]] = {
    Trigger.CLAIM: lambda session, tenant, e: lifecycle.claim_evaluation(session, e.id, "worker-1"),
    Trigger.CANCEL: lambda session, tenant, e: service.cancel_evaluation(session, tenant, e.id),
    Trigger.SUCCEED: _ending(Trigger.SUCCEED),
    Trigger.FAIL: _ending(Trigger.FAIL),
    Trigger.STOP: _ending(Trigger.STOP),
    Trigger.RETRY: lambda session, tenant, e: lifecycle.retry_evaluation(session, e.id, ATTEMPT),
}


def test_the_table_uses_the_triggers_carried_out_here() -> None:
    assert {t.trigger for t in EVALUATION_STATES.transitions} == set(CARRY_OUT)
    assert {t.trigger for t in EVALUATION_STATES.transitions if Actor.CLIENT in t.actors} == {Trigger.CANCEL}
    assert {t.trigger for t in EVALUATION_STATES.transitions if Actor.REAPER in t.actors} == {
        Trigger.FAIL,
        Trigger.STOP,
        Trigger.RETRY,
    }


@pytest.mark.parametrize("trigger", list(CARRY_OUT))
@pytest.mark.parametrize("status", list(EvaluationStatus))
def test_the_code_follows_the_table(
    session: Session, alice: TenantKey, status: EvaluationStatus, trigger: Trigger
) -> None:
    evaluation = make_evaluation(session, alice.tenant, status=status, attempt=ATTEMPT)
    CARRY_OUT[trigger](session, alice.tenant, evaluation)
    session.commit()
    session.refresh(evaluation)
    expected = EVALUATION_STATES.transition(status, trigger)
    assert evaluation.status == (expected.target if expected else status), (status, trigger)


def test_derived_sets() -> None:
    S = EvaluationStatus
    assert {S.SUCCEEDED, S.FAILED, S.CANCELLED} == TERMINAL_EVALUATION_STATUSES
    assert {S.QUEUED, S.RUNNING, S.CANCELLING} == ACTIVE_EVALUATION_STATUSES
    assert {S.RUNNING, S.CANCELLING} == EVALUATION_STATES.held


def test_the_writes_of_an_attempt_are_fenced_by_it(session: Session, alice: TenantKey) -> None:
    evaluation = make_evaluation(session, alice.tenant)
    claimed = lifecycle.claim_evaluation(session, evaluation.id, "worker-1")
    assert claimed is not None and claimed.attempt == 1
    assert lifecycle.claim_evaluation(session, evaluation.id, "worker-2") is None  # a duplicate delivery

    beat = lifecycle.heartbeat(session, evaluation.id, 1, progress={"done": 1, "total": 2})
    assert (beat.owned, beat.cancel_requested, beat.status) == (True, False, EvaluationStatus.RUNNING)
    assert not lifecycle.heartbeat(session, evaluation.id, 7).owned  # another attempt's
    session.expire_all()  # the API reads the row as the worker left it
    service.cancel_evaluation(session, alice.tenant, evaluation.id)
    assert lifecycle.heartbeat(session, evaluation.id, 1).cancel_requested

    assert not lifecycle.finish_evaluation(session, evaluation.id, 7, Trigger.STOP)
    assert lifecycle.finish_evaluation(session, evaluation.id, 1, Trigger.STOP)
    session.commit()
    session.refresh(evaluation)
    assert evaluation.status == EvaluationStatus.CANCELLED and evaluation.finished_at is not None
    assert evaluation.progress == {"done": 1, "total": 2}
    with pytest.raises(ValueError, match="not 'retry'"):
        lifecycle.finish_evaluation(session, evaluation.id, 1, Trigger.RETRY)


def _housekeeper(
    session_factory: sessionmaker[Session], storage: LocalStorage, enqueue_evaluation: Any
) -> Housekeeper:
    settings = Settings(env="test", requeue_after_seconds=600, heartbeat_timeout_seconds=30, max_attempts=3)
    return Housekeeper(
        settings,
        session_factory,
        storage,
        lambda run_id: None,
        LivePublisher(None),
        enqueue_evaluation=enqueue_evaluation,
    )


def test_the_reaper_retries_fails_or_stops_what_a_lost_worker_held(
    session: Session, session_factory: sessionmaker[Session], alice: TenantKey, storage: LocalStorage
) -> None:
    silent = utcnow() - timedelta(minutes=5)
    held = {"heartbeat_at": silent, "worker_id": "host:1", "started_at": silent}
    retried = make_evaluation(session, alice.tenant, status=EvaluationStatus.RUNNING, attempt=1, **held)
    failed = make_evaluation(session, alice.tenant, status=EvaluationStatus.RUNNING, attempt=3, **held)
    stopped = make_evaluation(session, alice.tenant, status=EvaluationStatus.CANCELLING, attempt=1, **held)
    alive = make_evaluation(
        session, alice.tenant, status=EvaluationStatus.RUNNING, attempt=1, heartbeat_at=utcnow()
    )
    sent: list[str] = []

    done = _housekeeper(session_factory, storage, sent.append).run_once()

    reaped = done["reap evaluations whose worker stopped answering"]
    assert {f"{retried.id} -> queued", f"{failed.id} -> failed", f"{stopped.id} -> cancelled"} <= set(reaped)
    assert alive.id not in " ".join(reaped)
    assert retried.id in sent and failed.id not in sent and stopped.id not in sent
    for evaluation in (retried, failed, stopped, alive):
        session.refresh(evaluation)
    assert (retried.status, retried.sent_at is not None, retried.finished_at) == ("queued", True, None)
    assert failed.status == EvaluationStatus.FAILED and failed.finished_at is not None
    assert failed.error == {
        "type": "worker_lost",
        "message": "attempt 3 of 3, the last, was interrupted: worker host:1 stopped answering (no heartbeat "
        "for 300 s); submit the evaluation again (POST /v1/evaluations)",
    }
    assert stopped.status == EvaluationStatus.CANCELLED and stopped.error is None
    assert alive.status == EvaluationStatus.RUNNING


def test_an_evaluation_left_queued_is_sent_again(
    session: Session, session_factory: sessionmaker[Session], alice: TenantKey, storage: LocalStorage
) -> None:
    stale = make_evaluation(session, alice.tenant, created_at=utcnow() - timedelta(hours=1))
    recent = make_evaluation(session, alice.tenant)
    sent: list[str] = []
    done = _housekeeper(session_factory, storage, sent.append).run_once()
    assert stale.id in done["send again the tasks of evaluations left queued"]
    assert stale.id in sent and recent.id not in sent
    session.refresh(stale)
    assert stale.sent_at is not None and stale.status == EvaluationStatus.QUEUED
