"""Submitting a run: validate everything that can be checked now, insert the queued run, and send it to
the training queue once the insert is committed (:func:`~app.db.on_commit`). Services never commit."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.base_models.service import ResolvedBaseModel, resolve_base_model
from app.config import Settings
from app.db import on_commit
from app.errors import Conflict, ValidationFailed
from app.ids import new_id
from app.models import Corpus, Run, Tenant
from app.queue import RunEnqueuer
from app.runs import repository
from app.runs.events import RunEventType, add_event
from app.runs.schemas import RunCreate
from app.runs.states import RunStatus
from app.storage import Storage
from worker.pretraining.corpus import NSP_MIN_DOCUMENTS
from worker.pretraining.hyperparameters import Hyperparameters, load_hyperparameters
from worker.pretraining.model_files import (
    BaseModelError,
    max_position_embeddings,
    read_config,
    sequence_length_error,
)

__all__ = ["MAX_METADATA_BYTES", "CreatedRun", "create_run"]

MAX_METADATA_BYTES = 16 << 10
MAX_IDEMPOTENCY_KEY_CHARS = 255


@dataclass(frozen=True)
class CreatedRun:
    run: Run
    created: bool  # False: an earlier request with the same Idempotency-Key and body created ``run``


# -- submission -----------------------------------------------------------------------------------------


def create_run(
    session: Session,
    storage: Storage,
    settings: Settings,
    tenant: Tenant,
    body: RunCreate,
    *,
    idempotency_key: str | None,
    enqueue: RunEnqueuer,
) -> CreatedRun:
    """Validate everything that can be checked now, insert the queued run, and send it to the training
    queue once the insert is committed.

    With an ``idempotency_key``, a request repeating an earlier one (same key, same body) returns the run
    it created; the same key with another body is a Conflict.
    """
    request_hash = _request_hash(body)
    if idempotency_key is not None:
        _check_idempotency_key(idempotency_key)
        existing = repository.get_by_idempotency_key(session, tenant.id, idempotency_key)
        if existing is not None:
            return _replayed(existing, idempotency_key, request_hash)

    hyperparameters = load_hyperparameters(body.hyperparameters)  # HyperparameterError: 422, mapped once
    _check_metadata(body.metadata)
    corpus = _corpus(session, tenant, body.corpus_id, "corpus_id")
    eval_corpus = (
        _corpus(session, tenant, body.eval_corpus_id, "eval_corpus_id") if body.eval_corpus_id else None
    )
    reference_corpus = (
        _corpus(session, tenant, body.reference_corpus_id, "reference_corpus_id")
        if body.reference_corpus_id
        else None
    )
    _check_corpora(hyperparameters, corpus, eval_corpus)
    base = resolve_base_model(session, tenant, body.base_model, settings=settings, storage=storage)
    _check_sequence_length(hyperparameters, base)

    run = Run(
        id=new_id("run"),
        tenant_id=tenant.id,
        name=body.name or f"{base.spec} on {corpus.name}"[:200],
        status=RunStatus.QUEUED,
        base_model=str(base.spec),
        corpus_id=corpus.id,
        eval_corpus_id=eval_corpus.id if eval_corpus else None,
        reference_corpus_id=reference_corpus.id if reference_corpus else None,
        hyperparameters=hyperparameters.model_dump(mode="json"),
        metadata_=body.metadata,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        progress={},
        latest={},
        baseline={},
        warnings=[],
    )
    try:
        with session.begin_nested():
            repository.add(session, run)
    except IntegrityError:
        if idempotency_key is None:
            raise
        # A concurrent request with the same Idempotency-Key inserted its run first.
        existing = repository.get_by_idempotency_key(session, tenant.id, idempotency_key)
        if existing is None:
            raise
        return _replayed(existing, idempotency_key, request_hash)
    add_event(session, run.id, RunEventType.QUEUED, f"submitted: {base.spec} on corpus {corpus.id}")
    run_id = run.id

    def send() -> None:
        enqueue(run_id)

    on_commit(session, send)
    return CreatedRun(run=run, created=True)


def _request_hash(body: RunCreate) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _check_idempotency_key(key: str) -> None:
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_CHARS or not key.isprintable() or not key.isascii():
        raise ValidationFailed(
            "Idempotency-Key",
            f"an Idempotency-Key is 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII characters",
        )


def _replayed(run: Run, key: str, request_hash: str) -> CreatedRun:
    if run.request_hash != request_hash:
        raise Conflict(
            f"Idempotency-Key {key!r} was already used for run {run.id} with a different request; use a new "
            "key for a new run",
            param="Idempotency-Key",
        )
    return CreatedRun(run=run, created=False)


def _check_metadata(metadata: dict[str, Any]) -> None:
    try:
        size = len(json.dumps(metadata, separators=(",", ":"), allow_nan=False).encode())
    except ValueError:
        raise ValidationFailed("metadata", "metadata may not contain NaN or infinite numbers") from None
    if size > MAX_METADATA_BYTES:
        raise ValidationFailed(
            "metadata", f"metadata is {size:,} bytes as JSON; at most {MAX_METADATA_BYTES:,} are kept per run"
        )


def _corpus(session: Session, tenant: Tenant, corpus_id: str, param: str) -> Corpus:
    """A corpus named in the body; another tenant's answers like a missing one (422 naming the field)."""
    corpus = repository.corpus_for_run(session, tenant.id, corpus_id)
    if corpus is None:
        raise ValidationFailed(param, f"no corpus with id {corpus_id!r}; upload it first (POST /v1/corpora)")
    return corpus


def _check_corpora(hyperparameters: Hyperparameters, corpus: Corpus, eval_corpus: Corpus | None) -> None:
    """What the corpora's statistics already refuse: settings an eval corpus makes ignored
    (HyperparameterError, 422 ``hyperparameters.<field>``), next-sentence prediction on one document."""
    if eval_corpus is not None:
        hyperparameters.check_eval_corpus()
    if hyperparameters.nsp and corpus.documents < NSP_MIN_DOCUMENTS:
        raise ValidationFailed(
            "hyperparameters.nsp",
            f"corpus {corpus.id} is {corpus.documents} document: next-sentence prediction needs at least "
            f"{NSP_MIN_DOCUMENTS} (its random second segments come from another document). Set nsp to false "
            "to train masked-LM only, or separate the documents with blank lines.",
        )


def _check_sequence_length(hyperparameters: Hyperparameters, base: ResolvedBaseModel) -> None:
    """max_seq_length must fit the model's position embeddings, when its config.json can be read here
    (not for hf: models, which the worker downloads; it checks them again)."""
    if base.local_path is None:
        return
    try:
        positions = max_position_embeddings(read_config(base.local_path))
    except BaseModelError:
        return  # the worker refuses it with the reason
    too_long = sequence_length_error(hyperparameters.max_seq_length, positions, str(base.spec))
    if too_long is not None:
        raise ValidationFailed("hyperparameters.max_seq_length", f"max_seq_length {too_long}")
