"""Queries of estimates: corpus analyses (found by their key, claimed and written by a worker, fenced by
their ``attempt``), and what earlier runs measured (their ``training_started`` and ``data_prepared``
events, their training throughput, their evaluations)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.models import Analysis, AnalysisStatus, Run, RunEvent, RunMetric, utcnow
from app.runs.events import RunEventType
from app.runs.states import ACTIVE_RUN_STATUSES

__all__ = [
    "active_runs",
    "add",
    "claim",
    "eval_passes",
    "events_of",
    "find",
    "finish",
    "get",
    "latest_events",
    "renew",
    "requeue",
    "runs_by_id",
    "train_throughputs",
]


# -- analyses ----------------------------------------------------------------------------------------------


def get(session: Session, tenant_id: str, corpus_id: str, analysis_id: str) -> Analysis | None:
    statement = select(Analysis).where(
        Analysis.tenant_id == tenant_id, Analysis.corpus_id == corpus_id, Analysis.id == analysis_id
    )
    return session.scalars(statement).one_or_none()


def find(session: Session, corpus_id: str, tokenizer_key: str, settings_key: str) -> Analysis | None:
    """The analysis of this key, whatever its status."""
    statement = select(Analysis).where(
        Analysis.corpus_id == corpus_id,
        Analysis.tokenizer_key == tokenizer_key,
        Analysis.settings_key == settings_key,
    )
    return session.scalars(statement).one_or_none()


def add(session: Session, analysis: Analysis) -> None:
    session.add(analysis)
    session.flush()


def requeue(session: Session, analysis: Analysis, *, from_status: AnalysisStatus, attempt: int) -> bool:
    """Queue ``analysis`` again (its task is to be sent again) if it is still ``from_status`` at
    ``attempt``: a lost task, a worker that stopped answering, a failure worth another try. False when
    another request or the worker changed it meanwhile."""
    statement = (
        update(Analysis)
        .where(Analysis.id == analysis.id, Analysis.status == from_status, Analysis.attempt == attempt)
        .values(status=AnalysisStatus.QUEUED, sent_at=utcnow(), error=None, result=None, finished_at=None)
        .execution_options(synchronize_session=False)
    )
    moved = session.execute(statement).rowcount == 1  # type: ignore[attr-defined]
    session.refresh(analysis)
    return moved


def claim(session: Session, analysis_id: str, *, now: datetime | None = None) -> int | None:
    """The worker takes a queued analysis (``attempt + 1``) in one conditional UPDATE; its attempt, or None
    when it is not queued (a duplicate task, or one already done)."""
    now = now or utcnow()
    statement = (
        update(Analysis)
        .where(Analysis.id == analysis_id, Analysis.status == AnalysisStatus.QUEUED)
        .values(status=AnalysisStatus.RUNNING, attempt=Analysis.attempt + 1, started_at=now, heartbeat_at=now)
        .returning(Analysis.attempt)
        .execution_options(synchronize_session=False)
    )
    return session.execute(statement).scalar_one_or_none()


def _held(analysis_id: str, attempt: int) -> Any:
    return (
        (Analysis.id == analysis_id)
        & (Analysis.attempt == attempt)
        & (Analysis.status == AnalysisStatus.RUNNING)
    )


def renew(session: Session, analysis_id: str, attempt: int) -> bool:
    """The heartbeat of the attempt that holds the analysis; False when it no longer does."""
    statement = (
        update(Analysis)
        .where(_held(analysis_id, attempt))
        .values(heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return bool(session.execute(statement).rowcount == 1)  # type: ignore[attr-defined]


def finish(
    session: Session,
    analysis_id: str,
    attempt: int,
    *,
    result: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> bool:
    """Succeeded with ``result``, or failed with ``error``, if ``attempt`` still holds it."""
    statement = (
        update(Analysis)
        .where(_held(analysis_id, attempt))
        .values(
            status=AnalysisStatus.SUCCEEDED if error is None else AnalysisStatus.FAILED,
            result=result,
            error=error,
            finished_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    return bool(session.execute(statement).rowcount == 1)  # type: ignore[attr-defined]


# -- what runs measured --------------------------------------------------------------------------------------


def latest_events(session: Session, event_type: RunEventType, *, limit: int) -> Sequence[RunEvent]:
    """The newest ``limit`` events of a type, every tenant's (the workers are shared), newest first."""
    statement = select(RunEvent).where(RunEvent.type == event_type).order_by(RunEvent.id.desc()).limit(limit)
    return session.scalars(statement).all()


def events_of(session: Session, run_ids: Collection[str], event_type: RunEventType) -> dict[str, RunEvent]:
    """The newest event of a type of each run."""
    if not run_ids:
        return {}
    statement = (
        select(RunEvent)
        .where(RunEvent.run_id.in_(run_ids), RunEvent.type == event_type)
        .order_by(RunEvent.id)
    )
    return {event.run_id: event for event in session.scalars(statement)}


def runs_by_id(session: Session, run_ids: Collection[str]) -> dict[str, Run]:
    if not run_ids:
        return {}
    return {run.id: run for run in session.scalars(select(Run).where(Run.id.in_(run_ids)))}


def train_throughputs(session: Session, run_ids: Collection[str]) -> dict[str, list[float]]:
    """Each run's logged ``tokens_per_second`` (training windows), by run."""
    found: dict[str, list[float]] = {}
    if not run_ids:
        return found
    statement = select(RunMetric.run_id, RunMetric.value).where(
        RunMetric.run_id.in_(run_ids), RunMetric.split == "train", RunMetric.name == "tokens_per_second"
    )
    for run_id, value in session.execute(statement):
        found.setdefault(run_id, []).append(value)
    return found


def eval_passes(session: Session, run_ids: Collection[str]) -> dict[tuple[str, str], int]:
    """``(run, split) -> evaluations`` of the eval and reference splits (steps with a masked-LM loss)."""
    if not run_ids:
        return {}
    statement = (
        select(RunMetric.run_id, RunMetric.split, func.count())
        .where(
            RunMetric.run_id.in_(run_ids),
            RunMetric.split.in_(("eval", "reference")),
            RunMetric.name == "masked_lm_loss",
        )
        .group_by(RunMetric.run_id, RunMetric.split)
    )
    return {(run_id, split): count for run_id, split, count in session.execute(statement)}


def active_runs(session: Session, *, limit: int) -> Sequence[Run]:
    """Runs queued or in a worker's hands, every tenant's, in the order the queue serves them (the time
    their task was last sent), at most ``limit``."""
    statement = (
        select(Run)
        .where(Run.status.in_(ACTIVE_RUN_STATUSES))
        .order_by(func.coalesce(Run.sent_at, Run.created_at), Run.id)
        .limit(limit)
    )
    return session.scalars(statement).all()
