"""Queries on evaluations (always scoped to a tenant), and on what an active evaluation keeps from being
deleted: its dataset, the runs and checkpoints it compares."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.evaluations.states import ACTIVE_EVALUATION_STATUSES
from app.models import Dataset, Evaluation, Run
from app.pagination import Page, fetch_page
from app.runs.states import ACTIVE_RUN_STATUSES

__all__ = [
    "active_using_model",
    "add",
    "dataset_for_evaluation",
    "dataset_users",
    "delete",
    "for_run",
    "get",
    "page",
]


def get(
    session: Session, tenant_id: str, evaluation_id: str, *, for_update: bool = False
) -> Evaluation | None:
    statement = select(Evaluation).where(Evaluation.tenant_id == tenant_id, Evaluation.id == evaluation_id)
    if for_update:
        statement = statement.with_for_update()
    return session.scalars(statement).one_or_none()


def for_run(session: Session, run_id: str) -> Evaluation | None:
    """The downstream evaluation of the run, if it was queued."""
    return session.scalars(select(Evaluation).where(Evaluation.run_id == run_id)).one_or_none()


def page(session: Session, tenant_id: str, *, limit: int, after: str | None) -> Page[Evaluation]:
    statement = select(Evaluation).where(Evaluation.tenant_id == tenant_id)
    return fetch_page(session, statement, Evaluation, limit=limit, after=after)


def add(session: Session, evaluation: Evaluation) -> None:
    session.add(evaluation)
    session.flush()


def delete(session: Session, evaluation: Evaluation) -> None:
    session.delete(evaluation)
    session.flush()


def dataset_for_evaluation(session: Session, tenant_id: str, dataset_id: str) -> Dataset | None:
    """The tenant's dataset, share-locked until the transaction ends: a concurrent deletion (which locks
    it for update) waits for the evaluation (or run) row to be committed, then sees it and refuses."""
    statement = (
        select(Dataset)
        .where(Dataset.tenant_id == tenant_id, Dataset.id == dataset_id)
        .with_for_update(read=True)
    )
    return session.scalars(statement).one_or_none()


def dataset_users(session: Session, dataset_id: str) -> tuple[list[str], list[str]]:
    """(active evaluations, active runs whose ``downstream`` names it) of the dataset: ids, oldest first."""
    evaluations = select(Evaluation.id).where(
        Evaluation.dataset_id == dataset_id, Evaluation.status.in_(ACTIVE_EVALUATION_STATUSES)
    )
    runs = select(Run.id).where(
        Run.downstream["dataset_id"].as_string() == dataset_id, Run.status.in_(ACTIVE_RUN_STATUSES)
    )
    return (
        list(session.scalars(evaluations.order_by(Evaluation.created_at))),
        list(session.scalars(runs.order_by(Run.created_at))),
    )


def active_using_model(
    session: Session, tenant_id: str, spec: str, *, prefix: str | None = None
) -> list[str]:
    """Ids of the tenant's active evaluations that compare the model ``spec`` (a normalized base-model
    spec), or one whose spec starts with ``prefix`` (``run:<id>@``: the run's checkpoints). Read in Python:
    a tenant has few active evaluations, and their models are a JSON list."""
    statement = (
        select(Evaluation)
        .where(Evaluation.tenant_id == tenant_id, Evaluation.status.in_(ACTIVE_EVALUATION_STATUSES))
        .order_by(Evaluation.created_at)
    )
    return [
        evaluation.id
        for evaluation in session.scalars(statement)
        if any(
            model["spec"] == spec or (prefix is not None and model["spec"].startswith(prefix))
            for model in evaluation.resolved_models
        )
    ]
