"""Queries on corpora (always scoped to a tenant)."""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from app.models import Corpus, Run
from app.pagination import Page, fetch_page
from app.runs.states import ACTIVE_RUN_STATUSES


def get(session: Session, tenant_id: str, corpus_id: str, *, for_update: bool = False) -> Corpus | None:
    statement = select(Corpus).where(Corpus.tenant_id == tenant_id, Corpus.id == corpus_id)
    if for_update:
        statement = statement.with_for_update()
    return session.scalars(statement).one_or_none()


def get_by_sha256(session: Session, tenant_id: str, sha256: str) -> Corpus | None:
    statement = select(Corpus).where(Corpus.tenant_id == tenant_id, Corpus.sha256 == sha256)
    return session.scalars(statement).one_or_none()


def page(session: Session, tenant_id: str, *, limit: int, after: str | None) -> Page[Corpus]:
    statement = select(Corpus).where(Corpus.tenant_id == tenant_id)
    return fetch_page(session, statement, Corpus, limit=limit, after=after)


def active_runs_using(session: Session, corpus_id: str) -> list[str]:
    """Ids of the runs that may still read the corpus (training, evaluation, reference or replay corpus)."""
    statement = (
        select(Run.id)
        .where(
            or_(
                Run.corpus_id == corpus_id,
                Run.eval_corpus_id == corpus_id,
                Run.reference_corpus_id == corpus_id,
                Run.replay_corpus_id == corpus_id,
            ),
            Run.status.in_(ACTIVE_RUN_STATUSES),
        )
        .order_by(Run.created_at)
    )
    return list(session.scalars(statement))


def add(session: Session, corpus: Corpus) -> None:
    session.add(corpus)
    session.flush()


def delete(session: Session, corpus: Corpus) -> None:
    session.delete(corpus)
    session.flush()
