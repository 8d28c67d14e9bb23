"""Corpus analyses: ``POST /v1/corpora/{id}/analyze`` validates the base model and the hyperparameters as a
run submission does, then answers from the analysis of that key, (corpus, tokenizer, preparation settings),
when one succeeded, or queues one for a worker (``bertpt.analyze_corpus``: :mod:`worker.analyses`) and
answers with it, to be polled at ``GET /v1/corpora/{id}/analyses/{analysis_id}``.

The key: the tokenizer is identified by the sha256 of its files (any base model with the same tokenizer
files shares the analysis; an ``hf:`` model, whose files only workers download, by its name), the settings
by the sha256 of the preparation settings. The steps depend on the batch and duration settings too, which
are not in the key: they are computed for each request from the analysis's instances.

A lost task is not left pending for ever, and no housekeeping is needed for it: when an analysis is asked
for (POST or GET), one still queued ``REQUEUE_AFTER_SECONDS`` after its task was sent, or running without
a heartbeat for ``HEARTBEAT_TIMEOUT_SECONDS`` (its worker died), is queued and sent again; the worker's
claim is one conditional UPDATE and its writes are fenced by the attempt, so a duplicate does nothing. A
failure that another try may cure (the worker lost, a process killed, an internal error) is retried by the
next POST; one of the corpus or the settings is kept and answered as is. Like a run's, tries are capped at
``MAX_ATTEMPTS`` (``Settings.max_attempts``): an analysis whose last attempt died or failed so is failed for
good (``attempts_exhausted`` for a worker that stopped answering), never sent again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.base_models.service import ResolvedBaseModel, resolve_base_model
from app.config import Settings
from app.corpora import repository as corpora_repository
from app.db import on_commit
from app.errors import NotFound
from app.estimates import repository
from app.estimates.schemas import AnalysisPublic, AnalyzeRequest
from app.ids import new_id
from app.models import Analysis, AnalysisStatus, Corpus, Tenant, utcnow
from app.queue import Enqueuer
from app.runs.submission import check_base_model, check_corpus_preparation
from app.storage import Storage
from worker.pretraining.estimates import CorpusAnalysis, step_figures
from worker.pretraining.hyperparameters import Hyperparameters, PreparationConfig, load_hyperparameters
from worker.pretraining.model_files import TOKENIZER_FILES

__all__ = [
    "RETRIED_FAILURES",
    "RequestedAnalysis",
    "analysis_public",
    "cached_analysis",
    "get_analysis",
    "request_analysis",
    "settings_key",
    "tokenizer_key",
]

# The files that make a tokenizer's token ids (with its special tokens and casing).
_TOKENIZER_IDENTITY = (
    *TOKENIZER_FILES,
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
# Failures worth another try when the analysis is asked for again (not the corpus's or the settings').
RETRIED_FAILURES = frozenset({"worker_lost", "analysis_process_died", "internal_error", "input_error"})


@dataclass(frozen=True)
class RequestedAnalysis:
    analysis: Analysis
    done: bool  # succeeded or failed: answered 200; pending (queued, running): 202


def tokenizer_key(base: ResolvedBaseModel) -> str:
    """What identifies the base model's tokenizer: the sha256 of its files (name and content), or of the
    spec of an ``hf:`` model (no files here)."""
    if base.local_path is None:
        return hashlib.sha256(f"spec:{base.spec}".encode()).hexdigest()
    versions: list[tuple[int, int] | None] = []
    for name in _TOKENIZER_IDENTITY:
        try:
            stat = (base.local_path / name).stat()
        except OSError:
            versions.append(None)
        else:
            versions.append((stat.st_mtime_ns, stat.st_size))
    return _tokenizer_files_digest(str(base.local_path), tuple(versions))


@lru_cache(maxsize=64)
def _tokenizer_files_digest(directory: str, versions: tuple[tuple[int, int] | None, ...]) -> str:
    """The digest of a directory's tokenizer files, computed once per version of the files."""
    digest = hashlib.sha256()
    for name, version in zip(_TOKENIZER_IDENTITY, versions, strict=True):
        if version is not None:
            digest.update(f"{name}\0".encode())
            digest.update(hashlib.sha256((Path(directory) / name).read_bytes()).digest())
    return digest.hexdigest()


def settings_key(config: PreparationConfig) -> str:
    """sha256 of the preparation settings as JSON (keys sorted)."""
    return hashlib.sha256(json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def request_analysis(
    session: Session,
    storage: Storage,
    settings: Settings,
    tenant: Tenant,
    corpus_id: str,
    body: AnalyzeRequest,
    *,
    enqueue: Enqueuer,
) -> tuple[RequestedAnalysis, Hyperparameters]:
    """The analysis of the tenant's corpus ``corpus_id`` with ``body``'s base model and hyperparameters:
    the one kept for that key, or a new one queued (its task sent once committed).

    Raises NotFound (another tenant's corpus too), HyperparameterError (422 ``hyperparameters.<field>``)
    and ValidationFailed as a run submission does for the same base model, hyperparameters and corpus (the
    rules across corpora, replay and reference, are left to the run: an analysis names no other corpus)."""
    corpus = _corpus(session, tenant, corpus_id)
    hyperparameters = load_hyperparameters(body.hyperparameters)
    check_corpus_preparation(hyperparameters, corpus)
    base = resolve_base_model(session, tenant, body.base_model, settings=settings, storage=storage)
    check_base_model(hyperparameters, base)
    key = (tokenizer_key(base), settings_key(hyperparameters.preparation()))

    found = repository.find(session, corpus.id, *key)
    if found is not None:
        return _answer(session, settings, found, enqueue=enqueue, retry_failure=True), hyperparameters
    row = Analysis(
        id=new_id("ana"),
        tenant_id=tenant.id,
        corpus_id=corpus.id,
        base_model=str(base.spec),
        tokenizer_key=key[0],
        settings_key=key[1],
        hyperparameters=hyperparameters.model_dump(mode="json"),
        status=AnalysisStatus.QUEUED,
    )
    try:
        with session.begin_nested():
            repository.add(session, row)
    except IntegrityError:
        # A concurrent request for the same key inserted its analysis first.
        found = repository.find(session, corpus.id, *key)
        if found is None:
            raise
        return _answer(session, settings, found, enqueue=enqueue, retry_failure=False), hyperparameters
    _send_once_committed(session, row.id, enqueue)
    return RequestedAnalysis(row, done=False), hyperparameters


def get_analysis(
    session: Session,
    settings: Settings,
    tenant: Tenant,
    corpus_id: str,
    analysis_id: str,
    *,
    enqueue: Enqueuer,
) -> RequestedAnalysis:
    """The analysis ``analysis_id`` of the tenant's corpus ``corpus_id`` (NotFound otherwise), its task sent
    again if it was lost."""
    _corpus(session, tenant, corpus_id)
    row = repository.get(session, tenant.id, corpus_id, analysis_id)
    if row is None:
        raise NotFound("analysis", analysis_id)
    return _answer(session, settings, row, enqueue=enqueue, retry_failure=False)


def cached_analysis(
    session: Session, corpus: Corpus, base: ResolvedBaseModel, config: PreparationConfig
) -> Analysis | None:
    """The succeeded analysis of ``corpus`` with ``base``'s tokenizer and ``config``, if there is one."""
    found = repository.find(session, corpus.id, tokenizer_key(base), settings_key(config))
    return found if found is not None and found.status == AnalysisStatus.SUCCEEDED else None


def analysis_public(row: Analysis, hyperparameters: Hyperparameters | None = None) -> AnalysisPublic:
    """The analysis as the API serves it, its steps those of ``hyperparameters`` (default: those it was
    created with)."""
    figures = None
    if row.status == AnalysisStatus.SUCCEEDED and row.result is not None:
        figures = CorpusAnalysis.model_validate(row.result)
        h = hyperparameters or Hyperparameters.model_validate(row.hyperparameters)
        figures = figures.model_copy(
            update={"steps": step_figures(h, figures.train.instances, figures.train.mean_length)}
        )
    return AnalysisPublic.from_row(row, figures)


def _corpus(session: Session, tenant: Tenant, corpus_id: str) -> Corpus:
    corpus = corpora_repository.get(session, tenant.id, corpus_id)
    if corpus is None:
        raise NotFound("corpus", corpus_id)
    return corpus


def _answer(
    session: Session, settings: Settings, row: Analysis, *, enqueue: Enqueuer, retry_failure: bool
) -> RequestedAnalysis:
    """``row`` as it is, or queued and sent again: lost (see the module docstring), or failed in a way
    another try may cure when ``retry_failure``."""
    now = utcnow()
    status = row.status
    lost = (
        status == AnalysisStatus.QUEUED
        and settings.requeue_after_seconds > 0
        and row.sent_at < now - timedelta(seconds=settings.requeue_after_seconds)
    ) or (
        status == AnalysisStatus.RUNNING
        and (row.heartbeat_at or row.started_at or now)
        < now - timedelta(seconds=settings.heartbeat_timeout_seconds)
    )
    failed_again = (
        retry_failure
        and status == AnalysisStatus.FAILED
        and (row.error or {}).get("type") in RETRIED_FAILURES
    )
    # Only a claim spends an attempt: a task lost while queued is sent again whatever the count.
    exhausted = status != AnalysisStatus.QUEUED and row.attempt >= settings.max_attempts
    if lost and exhausted:
        timeout = settings.heartbeat_timeout_seconds
        error = {
            "type": "attempts_exhausted",
            "message": f"attempt {row.attempt} of {settings.max_attempts} stopped answering (no heartbeat "
            f"for {timeout} s: its worker died or was killed, often for memory) and no attempt is left: the "
            "analysis is failed for good; a run with these settings would likely die the same way (try "
            "fewer documents or a smaller max_seq_length)",
        }
        repository.finish(session, row.id, row.attempt, error=error)
        session.refresh(row)
    elif (lost or (failed_again and not exhausted)) and repository.requeue(
        session, row, from_status=status, attempt=row.attempt
    ):
        _send_once_committed(session, row.id, enqueue)
    return RequestedAnalysis(row, done=not row.status.is_pending)


def _send_once_committed(session: Session, analysis_id: str, enqueue: Enqueuer) -> None:
    def send() -> None:
        enqueue(analysis_id)

    on_commit(session, send)
