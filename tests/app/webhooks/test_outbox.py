"""The outbox: every change of a run or an evaluation to a terminal status writes its webhook messages
in the same transaction, whichever code path makes it (the walk over the transition tables below), for
the webhooks subscribed to it and no others; a change that rolls back leaves none."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import session_scope
from app.evaluations import lifecycle as evaluation_lifecycle
from app.evaluations import service as evaluation_service
from app.evaluations.states import EVALUATION_STATES, EvaluationStatus
from app.ids import new_id
from app.jobs.states import Actor, StateMachine, Transition, Trigger
from app.models import Evaluation, MessageStatus, Run, Tenant, Webhook, WebhookMessage
from app.runs import lifecycle
from app.runs import service as run_service
from app.runs.states import RUN_STATES, RunStatus
from app.storage import LocalStorage
from app.storage.keys import run_model_key
from app.webhooks.events import EVENT_TYPES
from app.webhooks.schemas import EvaluationSummary, RunSummary
from tests.support import Factory, TenantKey, make_run

LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


class _Publisher:
    """The live stream's publisher: only called after a commit, which these tests never reach."""

    def publish(self, *_: Any) -> None:
        raise AssertionError("nothing is published before the commit")


def _webhook(session: Session, tenant_id: str, events: list[str]) -> Webhook:
    webhook = Webhook(
        id=new_id("wh"), tenant_id=tenant_id, url="http://127.0.0.1:9/", events=events, secret="s"
    )
    session.add(webhook)
    session.flush()
    return webhook


def _messages(session: Session, subject_id: str) -> list[WebhookMessage]:
    statement = select(WebhookMessage).where(WebhookMessage.subject_id == subject_id)
    return list(session.scalars(statement.order_by(WebhookMessage.webhook_id)))


def _end_run(
    session: Session, storage: LocalStorage, tenant: Tenant, step: Transition[Any], actor: Actor
) -> Run:
    """Make ``step`` (a transition to a terminal status) the way ``actor``'s code does."""
    run = make_run(session, tenant, status=step.source, attempt=1, heartbeat_at=LONG_AGO)
    if actor == Actor.CLIENT:
        run_service.cancel_run(session, tenant, run.id, publisher=_Publisher())  # type: ignore[arg-type]
    elif actor == Actor.WORKER:
        error = {"type": "x", "message": "boom"} if step.trigger == Trigger.FAIL else None
        assert lifecycle.finish_run(session, run.id, 1, step.trigger, error=error)
    else:  # the reaper fails a run whose last attempt was interrupted, and stops one being cancelled
        lifecycle.reap_expired(session, storage, timeout=timedelta(minutes=1), max_attempts=1)
    session.expire_all()
    return session.get_one(Run, run.id)


def _end_evaluation(session: Session, tenant: Tenant, step: Transition[Any], actor: Actor) -> Evaluation:
    evaluation = Evaluation(
        id=new_id("eval"),
        tenant_id=tenant.id,
        models=["minilm-l6-h384-uncased"],
        resolved_models=[],
        method="probe",
        seeds=1,
        status=step.source,
        attempt=1,
        heartbeat_at=LONG_AGO,
    )
    session.add(evaluation)
    session.flush()
    if actor == Actor.CLIENT:
        evaluation_service.cancel_evaluation(session, tenant, evaluation.id)
    elif actor == Actor.WORKER:
        result: dict[str, Any] | None = {"models": []} if step.trigger == Trigger.SUCCEED else None
        assert evaluation_lifecycle.finish_evaluation(session, evaluation.id, 1, step.trigger, result=result)
    else:
        evaluation_lifecycle.reap_expired(session, timeout=timedelta(minutes=1), max_attempts=1)
    session.expire_all()
    return session.get_one(Evaluation, evaluation.id)


def _ending(machine: StateMachine[Any]) -> list[tuple[Transition[Any], Actor]]:
    return [
        (step, actor)
        for step in machine.transitions
        if step.target in machine.terminal
        for actor in step.actors
    ]


def test_every_transition_to_a_terminal_status_writes_its_event_in_its_transaction(
    session: Session, alice: TenantKey, storage: LocalStorage
) -> None:
    """Walks the transition tables: every way a run or an evaluation ends, by every actor that may end it
    that way (the API's cancel, the worker's end, the reaper), writes one message, of the event of the
    status it reached, for a webhook subscribed to everything."""
    webhook = _webhook(session, alice.tenant.id, ["*"])
    walked = []
    for step, actor in _ending(RUN_STATES):
        run = _end_run(session, storage, alice.tenant, step, actor)
        assert run.status.is_terminal and run.finished_at is not None, (step, actor, run.status)
        messages = _messages(session, run.id)
        assert [(m.webhook_id, m.event_type) for m in messages] == [(webhook.id, f"run.{run.status}")]
        assert messages[0].status == MessageStatus.PENDING and messages[0].next_attempt_at is not None
        assert RunSummary.model_validate(messages[0].payload).status == run.status
        walked.append(f"run.{run.status}")
    for step, actor in _ending(EVALUATION_STATES):
        evaluation = _end_evaluation(session, alice.tenant, step, actor)
        assert evaluation.status.is_terminal, (step, actor, evaluation.status)
        messages = _messages(session, evaluation.id)
        assert [m.event_type for m in messages] == [f"evaluation.{evaluation.status}"]
        assert EvaluationSummary.model_validate(messages[0].payload).id == evaluation.id
        walked.append(f"evaluation.{evaluation.status}")
    assert set(walked) == set(EVENT_TYPES)  # every event type was reached


def test_a_transition_that_does_not_end_the_job_writes_nothing(session: Session, alice: TenantKey) -> None:
    _webhook(session, alice.tenant.id, ["*"])
    run = make_run(session, alice.tenant, status=RunStatus.RUNNING, attempt=1)
    run_service.cancel_run(session, alice.tenant, run.id, publisher=_Publisher())  # type: ignore[arg-type]
    assert lifecycle.retry_run(session, run.id, 1) is False  # cancelling: not retried
    assert session.get_one(Run, run.id).status == RunStatus.CANCELLING
    assert _messages(session, run.id) == []


def test_an_evaluation_failed_at_its_creation_sends_its_event(session: Session, alice: TenantKey) -> None:
    _webhook(session, alice.tenant.id, ["evaluation.failed"])
    downstream = {"dataset_id": "ds_gone", "method": "probe", "seeds": 1}
    run = make_run(session, alice.tenant, status=RunStatus.SUCCEEDED, downstream=downstream)
    evaluation = evaluation_service.queue_downstream_evaluation(session, run.id, enqueue=lambda _: None)
    assert evaluation is not None and evaluation.status == EvaluationStatus.FAILED
    [message] = _messages(session, evaluation.id)
    assert message.event_type == "evaluation.failed"
    assert message.payload["run_id"] == run.id and "deleted" in message.payload["error"]["message"]


def test_only_the_subscribed_webhooks_of_the_runs_tenant_get_its_event(
    session: Session, alice: TenantKey, bob: TenantKey
) -> None:
    failed_only = _webhook(session, alice.tenant.id, ["run.failed"])
    evaluations = _webhook(session, alice.tenant.id, ["evaluation.*"])
    runs = _webhook(session, alice.tenant.id, ["run.*"])
    exact = _webhook(session, alice.tenant.id, ["run.cancelled", "run.succeeded"])
    _webhook(session, bob.tenant.id, ["*"])
    progress = {"step": 20, "total_steps": 20, "eta_seconds": 0}
    latest = {"eval": {"masked_lm_loss": 2.5, "step": 20}, "train": {"loss": 3.0, "step": 20}}
    baseline = {"eval": {"masked_lm_loss": 3.1, "step": 0}}
    run = make_run(session, alice.tenant, status=RunStatus.RUNNING, attempt=1, name="domain adaptation")
    assert lifecycle.finish_run(
        session,
        run.id,
        1,
        Trigger.SUCCEED,
        output_storage_key=run_model_key(run.id),
        progress=progress,
        latest=latest,
        baseline=baseline,
    )
    messages = _messages(session, run.id)
    assert {m.webhook_id for m in messages} == {runs.id, exact.id}
    assert failed_only.id not in {m.webhook_id for m in messages} and evaluations.id not in {
        m.webhook_id for m in messages
    }
    summary = RunSummary.model_validate(messages[0].payload)
    assert (summary.id, summary.name, summary.status, summary.step, summary.total_steps) == (
        run.id,
        "domain adaptation",
        "succeeded",
        20,
        20,
    )
    assert (summary.final, summary.baseline, summary.error) == (latest, baseline, None)
    assert summary.links == {
        "run": f"/v1/runs/{run.id}",
        "metrics": f"/v1/runs/{run.id}/metrics",
        "events": f"/v1/runs/{run.id}/events",
        "model": f"/v1/runs/{run.id}/model",
    }
    assert summary.finished_at is not None and messages[0].occurred_at == summary.finished_at


def test_a_failed_runs_event_carries_its_error_and_no_model_link(session: Session, alice: TenantKey) -> None:
    _webhook(session, alice.tenant.id, ["run.failed"])
    run = make_run(session, alice.tenant, status=RunStatus.RUNNING, attempt=1)
    error = {"type": "non_finite_loss", "message": "the loss became NaN at step 3", "step": 3}
    assert lifecycle.finish_run(session, run.id, 1, Trigger.FAIL, error=error)
    [message] = _messages(session, run.id)
    summary = RunSummary.model_validate(message.payload)
    assert summary.error == error and "model" not in summary.links


def test_a_status_change_that_rolls_back_leaves_no_event(factory: Factory) -> None:
    with session_scope(factory.session_factory) as session:
        webhook = _webhook(session, factory.tenant_id, ["run.succeeded"])
    run_id = factory.run(
        corpus_id=factory.corpus(b"a b c.\nd e f.\n"),
        base_model="minilm-l6-h384-uncased",
        status=RunStatus.RUNNING,
        attempt=1,
    )
    with pytest.raises(RuntimeError), session_scope(factory.session_factory) as session:
        assert lifecycle.finish_run(session, run_id, 1, Trigger.SUCCEED)
        assert len(_messages(session, run_id)) == 1  # written with it...
        raise RuntimeError("the transaction fails after the status change")
    with factory.session_factory() as session:
        assert _messages(session, run_id) == []  # ...and gone with it
        assert session.get_one(Run, run_id).status == RunStatus.RUNNING

    with session_scope(factory.session_factory) as session:
        assert lifecycle.finish_run(session, run_id, 1, Trigger.SUCCEED)
    with factory.session_factory() as session:
        assert [(m.webhook_id, m.event_type) for m in _messages(session, run_id)] == [
            (webhook.id, "run.succeeded")
        ]
