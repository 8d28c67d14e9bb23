"""Queries on runs and what they produce (always scoped to a tenant through the run).

Metric queries have a PostgreSQL form that reads only what it needs from the ``run_metrics`` primary key
``(run_id, split, name, step)``: the series of a run are found by skipping through the index (a handful
of lookups instead of a scan of every point), their first and last points by one index probe each, and
min/max buckets are aggregated in the database. Other databases (the SQLite demo) get portable queries
and the same buckets computed in Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ARRAY, ColumnElement, String, bindparam, func, or_, select, text
from sqlalchemy.orm import Session

from app.base_models.spec import BaseModelSpec
from app.models import Corpus, Run, RunCheckpoint, RunEvent, RunMetric
from app.pagination import Page, fetch_page
from app.runs.downsample import Bucket, Point, aggregate
from app.runs.states import ACTIVE_RUN_STATUSES, RunStatus

__all__ = [
    "SeriesExtent",
    "active_runs_based_on",
    "add",
    "checkpoint",
    "checkpoints",
    "corpus_for_run",
    "delete",
    "events_after",
    "get",
    "get_by_idempotency_key",
    "metric_buckets",
    "metric_extents",
    "metric_points",
    "page",
    "queued_runs",
    "resources_of",
    "status_of",
]


def get(session: Session, tenant_id: str, run_id: str, *, for_update: bool = False) -> Run | None:
    statement = select(Run).where(Run.tenant_id == tenant_id, Run.id == run_id)
    if for_update:
        statement = statement.with_for_update()
    return session.scalars(statement).one_or_none()


def status_of(session: Session, run_id: str) -> RunStatus | None:
    return session.scalar(select(Run.status).where(Run.id == run_id))


def resources_of(session: Session, run_id: str) -> dict[str, Any] | None:
    """The run's stored ``resources`` (None: the run is gone, or was submitted before they existed)."""
    return session.scalar(select(Run.resources).where(Run.id == run_id))


def queued_runs(
    session: Session, *, limit: int, ids: Sequence[str] | None = None, lock: bool = False
) -> Sequence[Run]:
    """Queued runs, every tenant's (only ``ids`` when given), oldest first, at most ``limit``; with
    ``lock``, locked (``FOR UPDATE SKIP LOCKED``: rows another transaction holds are left out)."""
    statement = select(Run).where(Run.status == RunStatus.QUEUED)
    if ids is not None:
        statement = statement.where(Run.id.in_(ids))
    statement = statement.order_by(Run.created_at, Run.id).limit(limit)
    if lock:
        statement = statement.with_for_update(skip_locked=True)
    return session.scalars(statement).all()


def get_by_idempotency_key(session: Session, tenant_id: str, key: str) -> Run | None:
    statement = select(Run).where(Run.tenant_id == tenant_id, Run.idempotency_key == key)
    return session.scalars(statement).one_or_none()


def page(
    session: Session, tenant_id: str, *, statuses: Sequence[RunStatus], limit: int, after: str | None
) -> Page[Run]:
    statement = select(Run).where(Run.tenant_id == tenant_id)
    if statuses:
        statement = statement.where(Run.status.in_(statuses))
    return fetch_page(session, statement, Run, limit=limit, after=after)


def add(session: Session, run: Run) -> None:
    session.add(run)
    session.flush()


def delete(session: Session, run: Run) -> None:
    """Delete the run; its metrics, events and checkpoint rows go with it (ON DELETE CASCADE)."""
    session.delete(run)
    session.flush()


def corpus_for_run(session: Session, tenant_id: str, corpus_id: str) -> Corpus | None:
    """The tenant's corpus, share-locked until the transaction ends: a concurrent deletion (which locks
    it for update) waits for the run row to be committed, then sees the run and refuses."""
    statement = (
        select(Corpus).where(Corpus.tenant_id == tenant_id, Corpus.id == corpus_id).with_for_update(read=True)
    )
    return session.scalars(statement).one_or_none()


def active_runs_based_on(session: Session, tenant_id: str, run_id: str) -> list[str]:
    """Ids of the tenant's active runs that start from ``run_id``'s model or one of its checkpoints."""
    statement = (
        select(Run.id)
        .where(
            Run.tenant_id == tenant_id,
            or_(
                Run.base_model == str(BaseModelSpec.run(run_id)),
                Run.base_model.startswith(BaseModelSpec.run_step_prefix(run_id), autoescape=True),
            ),
            Run.status.in_(ACTIVE_RUN_STATUSES),
        )
        .order_by(Run.created_at)
    )
    return list(session.scalars(statement))


def events_after(session: Session, run_id: str, *, after: int | None, limit: int) -> Sequence[RunEvent]:
    """Up to ``limit`` events of the run with an id above ``after``, oldest first."""
    statement = select(RunEvent).where(RunEvent.run_id == run_id)
    if after is not None:
        statement = statement.where(RunEvent.id > after)
    return session.scalars(statement.order_by(RunEvent.id).limit(limit)).all()


def checkpoints(session: Session, run_id: str) -> Sequence[RunCheckpoint]:
    statement = select(RunCheckpoint).where(RunCheckpoint.run_id == run_id).order_by(RunCheckpoint.step)
    return session.scalars(statement).all()


def checkpoint(session: Session, run_id: str, step: int) -> RunCheckpoint | None:
    return session.get(RunCheckpoint, (run_id, step))


# -- metrics ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesExtent:
    """A metric series of a run within the requested steps: its first and last point there."""

    split: str
    name: str
    first: Point
    last: Point


def metric_extents(
    session: Session,
    run_id: str,
    *,
    split: str | None,
    names: Sequence[str] | None,
    since_step: int | None,
    until_step: int | None,
) -> list[SeriesExtent]:
    """The run's series (optionally one split and some names) that have points between ``since_step``
    and ``until_step`` (inclusive), ordered by split and name."""
    if _is_postgresql(session):
        return _metric_extents_postgresql(session, run_id, split, names, since_step, until_step)
    statement = (
        select(RunMetric.split, RunMetric.name, func.min(RunMetric.step), func.max(RunMetric.step))
        .where(*_series_conditions(run_id, split, names, since_step, until_step))
        .group_by(RunMetric.split, RunMetric.name)
    )
    extents = []
    for series_split, name, first_step, last_step in session.execute(
        statement.order_by(RunMetric.split, RunMetric.name)
    ):
        values: dict[int, float] = dict(
            session.execute(
                select(RunMetric.step, RunMetric.value).where(
                    RunMetric.run_id == run_id,
                    RunMetric.split == series_split,
                    RunMetric.name == name,
                    RunMetric.step.in_([first_step, last_step]),
                )
            ).all()
        )
        extents.append(
            SeriesExtent(series_split, name, (first_step, values[first_step]), (last_step, values[last_step]))
        )
    return extents


def metric_points(
    session: Session, run_id: str, split: str, name: str, *, since_step: int | None, until_step: int | None
) -> list[Point]:
    """Every point of one series between the steps (inclusive), steps ascending."""
    statement = (
        select(RunMetric.step, RunMetric.value)
        .where(*_series_conditions(run_id, split, [name], since_step, until_step))
        .order_by(RunMetric.step)
    )
    return [(step, value) for step, value in session.execute(statement)]


def metric_buckets(
    session: Session, run_id: str, split: str, name: str, *, width: int, since_step: int, until_step: int
) -> list[Bucket]:
    """The min/max buckets (:mod:`app.runs.downsample`) of one series between the steps (inclusive)."""
    if not _is_postgresql(session):
        points = metric_points(session, run_id, split, name, since_step=since_step, until_step=until_step)
        return aggregate(points, width)
    # One index range scan per bucket rather than one GROUP BY over the whole series: the plan does not
    # depend on statistics (a GROUP BY on step / width has no estimate of its group count, and a series
    # that is much of the table tempts the planner into a full scan and a sort), and the rows come in
    # primary-key order. min/max of ARRAY[value, step] is the lowest/highest value with its step (ties: the
    # earliest/latest step), in the same pass; steps are exact in a double up to 2**53.
    statement = text(
        """
        SELECT b.bucket, agg.points, agg.low, agg.high
        FROM generate_series(CAST(:since_step AS bigint) / :width, CAST(:until_step AS bigint) / :width)
             AS b(bucket)
        CROSS JOIN LATERAL (
            SELECT count(*) AS points,
                   min(ARRAY[value, step::float8]) AS low, max(ARRAY[value, step::float8]) AS high
            FROM run_metrics
            WHERE run_id = :run_id AND split = :split AND name = :name
              AND step >= GREATEST(b.bucket * :width, :since_step)
              AND step <= LEAST((b.bucket + 1) * :width - 1, :until_step)
        ) agg
        WHERE agg.points > 0
        ORDER BY b.bucket
        """
    )
    params = {"run_id": run_id, "split": split, "name": name, "width": width}
    rows = session.execute(statement, {**params, "since_step": since_step, "until_step": until_step})
    return [
        Bucket(index=int(bucket), count=int(count), low=(int(low[1]), low[0]), high=(int(high[1]), high[0]))
        for bucket, count, low, high in rows
    ]


def _is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _series_conditions(
    run_id: str,
    split: str | None,
    names: Sequence[str] | None,
    since_step: int | None,
    until_step: int | None,
) -> list[ColumnElement[bool]]:
    conditions = [RunMetric.run_id == run_id]
    if split is not None:
        conditions.append(RunMetric.split == split)
    if names is not None:
        conditions.append(RunMetric.name.in_(names))
    if since_step is not None:
        conditions.append(RunMetric.step >= since_step)
    if until_step is not None:
        conditions.append(RunMetric.step <= until_step)
    return conditions


def _step_conditions(
    since_step: int | None, until_step: int | None, alias: str = ""
) -> tuple[str, dict[str, int]]:
    """SQL conditions on the step (only structure goes into the text; values are bound)."""
    conditions, params = "", {}
    if since_step is not None:
        conditions += f" AND {alias}step >= :since_step"
        params["since_step"] = since_step
    if until_step is not None:
        conditions += f" AND {alias}step <= :until_step"
        params["until_step"] = until_step
    return conditions, params


def _metric_extents_postgresql(
    session: Session,
    run_id: str,
    split: str | None,
    names: Sequence[str] | None,
    since_step: int | None,
    until_step: int | None,
) -> list[SeriesExtent]:
    # A recursive "skip scan": each step finds the next (split, name) after the previous one with one probe
    # of the primary key, so listing a run's series costs a few lookups however many points it has.
    steps, step_params = _step_conditions(since_step, until_step, alias="m.")
    seed_split = "AND split = :split" if split is not None else ""
    # Within one split, compare the name alone: with the split fixed by an equality, PostgreSQL cannot use a
    # row comparison on (split, name) to position the index scan and would read the split's every entry.
    after_previous = (
        "m.split = :split AND m.name > s.name"
        if split is not None
        else "(m.split, m.name) > (s.split, s.name)"
    )
    wanted = "WHERE s.name = ANY(:names)" if names is not None else ""
    statement = text(
        f"""
        WITH RECURSIVE series(split, name) AS (
            (SELECT split, name FROM run_metrics WHERE run_id = :run_id {seed_split}
             ORDER BY split, name LIMIT 1)
            UNION ALL
            SELECT nxt.split, nxt.name FROM series s CROSS JOIN LATERAL (
                SELECT m.split, m.name FROM run_metrics m
                WHERE m.run_id = :run_id AND {after_previous}
                ORDER BY m.split, m.name LIMIT 1
            ) nxt
        )
        SELECT s.split, s.name, f.step, f.value, l.step, l.value
        FROM series s
        CROSS JOIN LATERAL (
            SELECT m.step, m.value FROM run_metrics m
            WHERE m.run_id = :run_id AND m.split = s.split AND m.name = s.name {steps}
            ORDER BY m.step LIMIT 1
        ) f
        CROSS JOIN LATERAL (
            SELECT m.step, m.value FROM run_metrics m
            WHERE m.run_id = :run_id AND m.split = s.split AND m.name = s.name {steps}
            ORDER BY m.step DESC LIMIT 1
        ) l
        {wanted}
        ORDER BY s.split, s.name
        """
    )
    params: dict[str, Any] = {**step_params, "run_id": run_id}
    if split is not None:
        params["split"] = split
    if names is not None:
        statement = statement.bindparams(bindparam("names", type_=ARRAY(String)))
        params["names"] = list(names)
    rows = session.execute(statement, params)
    return [
        SeriesExtent(series_split, name, (first_step, first_value), (last_step, last_value))
        for series_split, name, first_step, first_value, last_step, last_value in rows
    ]


def last_event_data(session: Session, run_id: str, event_type: str) -> dict[str, Any]:
    """The data of the run's newest event of ``event_type``; empty when it has none."""
    statement = (
        select(RunEvent.data)
        .where(RunEvent.run_id == run_id, RunEvent.type == event_type)
        .order_by(RunEvent.id.desc())
        .limit(1)
    )
    return dict(session.scalar(statement) or {})
