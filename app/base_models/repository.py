"""Queries for base models that are runs' outputs."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Run, RunCheckpoint
from app.runs.states import RunStatus


def get_run(session: Session, tenant_id: str, run_id: str) -> Run | None:
    return session.scalars(select(Run).where(Run.tenant_id == tenant_id, Run.id == run_id)).one_or_none()


def get_run_checkpoint(session: Session, run_id: str, step: int) -> RunCheckpoint | None:
    return session.get(RunCheckpoint, (run_id, step))


def succeeded_runs(session: Session, tenant_id: str) -> Sequence[Run]:
    statement = (
        select(Run)
        .where(Run.tenant_id == tenant_id, Run.status == RunStatus.SUCCEEDED)
        .order_by(Run.created_at.desc(), Run.id.desc())
    )
    return session.scalars(statement).all()


def checkpoint_steps(session: Session, run_ids: Sequence[str]) -> dict[str, list[int]]:
    steps: dict[str, list[int]] = defaultdict(list)
    if run_ids:
        statement = (
            select(RunCheckpoint.run_id, RunCheckpoint.step)
            .where(RunCheckpoint.run_id.in_(run_ids))
            .order_by(RunCheckpoint.run_id, RunCheckpoint.step)
        )
        for run_id, step in session.execute(statement):
            steps[run_id].append(step)
    return steps
