"""The outbox: webhook messages written in the transaction that ends a run or an evaluation.

:func:`record_ended` is called by the one door every status change of a job goes through
(:mod:`app.jobs.leases`: :func:`~app.jobs.leases.transition_held` for the worker's conditional UPDATEs,
:func:`~app.jobs.leases.set_status` for the API's cancel, the reapers and an evaluation failed at its
creation), whenever the new status is terminal. Its rows commit with the status change or not at all: a
rolled-back change leaves no event, and no committed one is missed. The worker's dispatcher
(:mod:`worker.webhooks`) reads committed rows only, so nothing is sent before the commit.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.ids import new_id
from app.models import Evaluation, MessageStatus, Run, WebhookMessage, utcnow
from app.webhooks import repository
from app.webhooks.events import EventKind, event_type, matches
from app.webhooks.schemas import EvaluationSummary, RunSummary

__all__ = ["evaluation_summary", "record_ended", "run_summary"]


def record_ended(session: Session, job: Run | Evaluation) -> list[WebhookMessage]:
    """One pending message per webhook of the job's tenant subscribed to its end (``run.succeeded``...),
    with the job's summary as of now, due at once; in the caller's transaction. ``job`` holds its new,
    terminal status. Returns the messages (none when no webhook subscribes)."""
    kind = EventKind.RUN if isinstance(job, Run) else EventKind.EVALUATION
    event = event_type(kind, job.status)
    webhooks = [
        webhook
        for webhook in repository.for_tenant(session, job.tenant_id)
        if any(matches(pattern, event) for pattern in webhook.events)
    ]
    if not webhooks:
        return []
    summary = run_summary(job) if isinstance(job, Run) else evaluation_summary(job)
    payload = summary.model_dump(mode="json")
    now = utcnow()
    occurred_at = job.finished_at or now
    messages = [
        WebhookMessage(
            id=new_id("msg"),
            webhook_id=webhook.id,
            event_type=event,
            subject_id=job.id,
            payload=payload,
            occurred_at=occurred_at,
            status=MessageStatus.PENDING,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
        for webhook in webhooks
    ]
    session.add_all(messages)
    session.flush()
    return messages


def run_summary(run: Run) -> RunSummary:
    """What a run.* event tells: where the run ended, its final and baseline metrics (by split: train,
    eval, reference), its error, and links (paths of the API)."""
    progress: dict[str, Any] = run.progress or {}
    links = {"run": f"/v1/runs/{run.id}", "metrics": f"/v1/runs/{run.id}/metrics"}
    links["events"] = f"/v1/runs/{run.id}/events"
    if run.output_storage_key is not None:
        links["model"] = f"/v1/runs/{run.id}/model"
    return RunSummary(
        id=run.id,
        name=run.name,
        status=run.status.value,
        base_model=run.base_model,
        step=progress.get("step"),
        total_steps=progress.get("total_steps"),
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        baseline=run.baseline or {},
        final=run.latest or {},
        error=run.error,
        links=links,
    )


def evaluation_summary(evaluation: Evaluation) -> EvaluationSummary:
    """What an evaluation.* event tells: the models compared, the result or the error, and links."""
    links = {"evaluation": f"/v1/evaluations/{evaluation.id}"}
    if evaluation.run_id is not None:
        links["run"] = f"/v1/runs/{evaluation.run_id}"
    return EvaluationSummary(
        id=evaluation.id,
        status=evaluation.status.value,
        method=evaluation.method,
        models=list(evaluation.models or []),
        run_id=evaluation.run_id,
        created_at=evaluation.created_at,
        finished_at=evaluation.finished_at,
        result=evaluation.result,
        error=evaluation.error,
        links=links,
    )
