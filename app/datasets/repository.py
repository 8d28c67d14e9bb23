"""Queries on labelled datasets (always scoped to a tenant)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.evaluations.repository import dataset_users
from app.models import Dataset
from app.pagination import Page, fetch_page


def get(session: Session, tenant_id: str, dataset_id: str, *, for_update: bool = False) -> Dataset | None:
    statement = select(Dataset).where(Dataset.tenant_id == tenant_id, Dataset.id == dataset_id)
    if for_update:
        statement = statement.with_for_update()
    return session.scalars(statement).one_or_none()


def get_by_sha256(session: Session, tenant_id: str, sha256: str) -> Dataset | None:
    statement = select(Dataset).where(Dataset.tenant_id == tenant_id, Dataset.sha256 == sha256)
    return session.scalars(statement).one_or_none()


def page(session: Session, tenant_id: str, *, limit: int, after: str | None) -> Page[Dataset]:
    statement = select(Dataset).where(Dataset.tenant_id == tenant_id)
    return fetch_page(session, statement, Dataset, limit=limit, after=after)


def dataset_in_use(session: Session, dataset_id: str) -> str | None:
    """Why the dataset cannot be deleted now (a sentence naming what uses it), or None: an active
    evaluation of it, or an active run whose ``downstream`` names it (its evaluation is queued when it
    succeeds)."""
    evaluations, runs = dataset_users(session, dataset_id)
    uses = [
        *([f"active evaluation(s) {', '.join(evaluations[:5])}"] if evaluations else []),
        *([f"the downstream settings of active run(s) {', '.join(runs[:5])}"] if runs else []),
    ]
    if not uses:
        return None
    return f"{' and '.join(uses)} use it; cancel them or wait for them to finish, then delete it"


def add(session: Session, dataset: Dataset) -> None:
    session.add(dataset)
    session.flush()


def delete(session: Session, dataset: Dataset) -> None:
    session.delete(dataset)
    session.flush()
