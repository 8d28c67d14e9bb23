"""Queries on uploaded checkpoints (always scoped to a tenant)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Checkpoint, Run
from app.pagination import Page, fetch_page
from app.runs.states import ACTIVE_RUN_STATUSES


def get(
    session: Session, tenant_id: str, checkpoint_id: str, *, for_update: bool = False
) -> Checkpoint | None:
    statement = select(Checkpoint).where(Checkpoint.tenant_id == tenant_id, Checkpoint.id == checkpoint_id)
    if for_update:
        statement = statement.with_for_update()
    return session.scalars(statement).one_or_none()


def page(session: Session, tenant_id: str, *, limit: int, after: str | None) -> Page[Checkpoint]:
    statement = select(Checkpoint).where(Checkpoint.tenant_id == tenant_id)
    return fetch_page(session, statement, Checkpoint, limit=limit, after=after)


def all_for_tenant(session: Session, tenant_id: str) -> Sequence[Checkpoint]:
    statement = (
        select(Checkpoint)
        .where(Checkpoint.tenant_id == tenant_id)
        .order_by(Checkpoint.created_at.desc(), Checkpoint.id.desc())
    )
    return session.scalars(statement).all()


def active_runs_using(session: Session, tenant_id: str, base_model: str) -> list[str]:
    statement = (
        select(Run.id)
        .where(Run.tenant_id == tenant_id, Run.base_model == base_model, Run.status.in_(ACTIVE_RUN_STATUSES))
        .order_by(Run.created_at)
    )
    return list(session.scalars(statement))


def add(session: Session, checkpoint: Checkpoint) -> None:
    session.add(checkpoint)
    session.flush()


def delete(session: Session, checkpoint: Checkpoint) -> None:
    session.delete(checkpoint)
    session.flush()
