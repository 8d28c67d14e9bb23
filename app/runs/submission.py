"""Submitting a run: validate everything that can be checked now, insert the queued run, and send it to
the training queue of its resource class once the insert is committed (:func:`~app.db.on_commit`; the
queue: :mod:`app.runs.routing`). Services never commit."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.base_models.service import ResolvedBaseModel, resolve_base_model
from app.config import Settings
from app.db import on_commit
from app.errors import Conflict, ValidationFailed
from app.evaluations.service import check_downstream
from app.ids import new_id
from app.models import Corpus, Run, Tenant
from app.queue import RunEnqueuer
from app.runs import repository
from app.runs.events import RunEventType, add_event
from app.runs.schemas import RunCreate, RunResources
from app.runs.states import RunStatus
from app.storage import Storage
from worker.pretraining.hyperparameters import HyperparameterError, Hyperparameters, load_hyperparameters
from worker.pretraining.model_files import (
    TOKENIZER_FILES,
    BaseModelError,
    max_position_embeddings,
    read_config,
    segment_types_error,
    sequence_length_error,
    token_types,
    tokenizer_vocabulary,
    vocabulary_error,
)
from worker.pretraining.preparation_rules import (
    HeldOut,
    PreparationError,
    check_documents,
    check_scripts,
    check_whole_word_vocabulary,
    held_out_split,
)

__all__ = [
    "MAX_METADATA_BYTES",
    "CheckedRun",
    "CreatedRun",
    "check_base_model",
    "check_corpora",
    "check_corpus_preparation",
    "check_run",
    "create_run",
]

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

    checked = check_run(session, storage, settings, tenant, body)
    hyperparameters, base, corpus = checked.hyperparameters, checked.base, checked.corpus
    eval_corpus, reference_corpus = checked.eval_corpus, checked.reference_corpus
    # Its dataset is share-locked with the run's insert: it cannot be deleted while the run is active.
    downstream = check_downstream(session, tenant, body.downstream) if body.downstream else None

    run = Run(
        id=new_id("run"),
        tenant_id=tenant.id,
        name=body.name or f"{base.spec} on {corpus.name}"[:200],
        status=RunStatus.QUEUED,
        base_model=str(base.spec),
        corpus_id=corpus.id,
        eval_corpus_id=eval_corpus.id if eval_corpus else None,
        reference_corpus_id=reference_corpus.id if reference_corpus else None,
        replay_corpus_id=checked.replay_corpus.id if checked.replay_corpus else None,
        hyperparameters=hyperparameters.model_dump(mode="json"),
        metadata_=body.metadata,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        progress={},
        latest={},
        baseline={},
        warnings=[],
        downstream=downstream,
        resources=_resources(settings, body).model_dump(mode="json"),
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


@dataclass(frozen=True)
class CheckedRun:
    """A run body that passed every check of the submission: what the run would be made of."""

    hyperparameters: Hyperparameters  # defaults filled in
    base: ResolvedBaseModel
    corpus: Corpus
    eval_corpus: Corpus | None
    reference_corpus: Corpus | None
    replay_corpus: Corpus | None = None


def check_run(
    session: Session, storage: Storage, settings: Settings, tenant: Tenant, body: RunCreate
) -> CheckedRun:
    """Every check of a run submission, nothing stored or sent: the hyperparameters (HyperparameterError,
    422 ``hyperparameters.<field>``), the metadata, the corpora (this tenant's), what their stored
    statistics and the base model's files refuse (ValidationFailed naming the field). Shared by
    :func:`create_run` and the estimate of a run (:mod:`app.estimates.service`)."""
    hyperparameters = load_hyperparameters(body.hyperparameters)  # HyperparameterError: 422, mapped once
    if body.resources is not None and (problem := hyperparameters.devices_error(body.resources.devices)):
        raise HyperparameterError([("batch_size", problem)])
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
    replay_corpus = (
        _corpus(session, tenant, body.replay_corpus_id, "replay_corpus_id") if body.replay_corpus_id else None
    )
    check_corpora(hyperparameters, corpus, eval_corpus, reference_corpus, replay_corpus=replay_corpus)
    base = resolve_base_model(session, tenant, body.base_model, settings=settings, storage=storage)
    check_base_model(hyperparameters, base)
    return CheckedRun(hyperparameters, base, corpus, eval_corpus, reference_corpus, replay_corpus)


def _resources(settings: Settings, body: RunCreate) -> RunResources:
    """What the run asks for, the default class (DEFAULT_RESOURCE_CLASS, one device) when it names none."""
    return body.resources or RunResources(resource_class=settings.default_resource_class)


def _request_hash(body: RunCreate) -> str:
    # Without resources, as before they existed: an Idempotency-Key repeated across the upgrade still matches.
    dumped = body.model_dump(mode="json", exclude={"resources"} if body.resources is None else None)
    canonical = json.dumps(dumped, sort_keys=True, separators=(",", ":"))
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


# -- what the corpora and the base model already refuse ---------------------------------------------------
# The training library's own rules (worker.pretraining.preparation_rules, model_files), called with what was
# stored at upload: a run the worker would refuse while preparing its data or loading its model is a 422
# naming the field, and nothing is queued. What needs the text tokenized (documents the tokenizer leaves
# empty, [UNK] floods) or the model downloaded (hf: models) is still the worker's to find.

_CORPUS_ROLES = {
    "corpus_id": "corpus",
    "eval_corpus_id": "eval corpus",
    "reference_corpus_id": "reference corpus",
    "replay_corpus_id": "replay corpus",
}


@contextmanager
def _refused_as(param: str) -> Iterator[None]:
    """A PreparationError as the 422 of the submission: of the training corpus, it names the setting the
    corpus cannot meet (``hyperparameters.<field>``); of another corpus, that corpus's field."""
    try:
        yield
    except PreparationError as exc:
        named = f"hyperparameters.{exc.field}" if exc.field and param == "corpus_id" else param
        raise ValidationFailed(named, str(exc)) from None


def check_corpora(
    hyperparameters: Hyperparameters,
    corpus: Corpus,
    eval_corpus: Corpus | None,
    reference_corpus: Corpus | None,
    *,
    replay_corpus: Corpus | None = None,
) -> None:
    """What the corpora's stored statistics already refuse: settings an eval corpus makes ignored
    (HyperparameterError, 422 ``hyperparameters.<field>``), too few documents (next-sentence prediction on
    one), whole-word masking of text without spaces, a held-out split that leaves too little to train on,
    a forgetting budget without a reference corpus, and select_checkpoint=best or early stopping without a
    held-out split."""
    if eval_corpus is not None:
        hyperparameters.check_eval_corpus()
    _check_replay(hyperparameters, replay_corpus, reference_corpus)
    for param, stored in (
        ("corpus_id", corpus),
        ("eval_corpus_id", eval_corpus),
        ("reference_corpus_id", reference_corpus),
        ("replay_corpus_id", replay_corpus),
    ):
        if stored is not None:
            _check_stored_corpus(hyperparameters, param, stored)
    hyperparameters.check_reference_corpus(reference_corpus is not None)  # a forgetting budget needs one
    held = _held_out(hyperparameters, corpus, eval_corpus=eval_corpus is not None)
    # select_checkpoint=best and early stopping compare held-out losses (sentences None: not known yet).
    hyperparameters.check_eval_split(eval_corpus is not None or held.documents > 0 or held.sentences != 0)


def check_corpus_preparation(hyperparameters: Hyperparameters, corpus: Corpus) -> None:
    """What the training corpus's stored statistics refuse of the preparation settings alone (its documents,
    scripts and held-out split, as :func:`check_corpora` asks them): the checks of a corpus analysis, which
    names no other corpus (the rules across corpora, replay and reference, are the run's)."""
    _check_stored_corpus(hyperparameters, "corpus_id", corpus)
    _held_out(hyperparameters, corpus, eval_corpus=False)


def _check_stored_corpus(hyperparameters: Hyperparameters, param: str, stored: Corpus) -> None:
    """Too few documents, whole-word masking of text without spaces (ValidationFailed naming ``param``)."""
    what = f"{_CORPUS_ROLES[param]} {stored.id}"
    with _refused_as(param):
        check_documents(stored.documents, hyperparameters, what)
        characters = stored.stats.get("characters")
        unspaced = stored.stats.get("unspaced_script_characters")  # absent: uploaded before it was counted
        if isinstance(characters, int) and isinstance(unspaced, int):
            check_scripts(
                hyperparameters, characters=characters, unspaced_script_characters=unspaced, what=what
            )


def _held_out(hyperparameters: Hyperparameters, corpus: Corpus, *, eval_corpus: bool) -> HeldOut:
    """What is held out of the training corpus; ValidationFailed when the settings ask for a split it cannot
    give and still train."""
    with _refused_as("corpus_id"):
        return held_out_split(
            hyperparameters,
            documents=corpus.documents,
            # Lines are sentences unless they are split (sentence_splitting: auto) after tokenizing.
            sentences=corpus.sentences if hyperparameters.sentence_splitting == "none" else None,
            eval_corpus=eval_corpus,
            what=f"corpus {corpus.id}",
        )


def _check_replay(
    hyperparameters: Hyperparameters, replay_corpus: Corpus | None, reference_corpus: Corpus | None
) -> None:
    """replay_ratio above 0 needs a replay corpus (422 ``hyperparameters.replay_ratio``), a replay corpus
    needs replay_ratio above 0 (422 ``replay_corpus_id``); a replay corpus that is also the reference corpus
    must spare a held-out part for the reference evaluation (no instance both replayed and evaluated)."""
    problem = hyperparameters.replay_corpus_error(has_replay_corpus=replay_corpus is not None)
    if problem is not None:
        field, message = problem
        if field == "replay_ratio":
            raise HyperparameterError([problem])
        raise ValidationFailed("replay_corpus_id", message)
    if replay_corpus is None or reference_corpus is None or replay_corpus.id != reference_corpus.id:
        return
    what = f"replay corpus {replay_corpus.id}"
    with _refused_as("replay_corpus_id"):
        held = held_out_split(
            hyperparameters,
            documents=replay_corpus.documents,
            sentences=replay_corpus.sentences if hyperparameters.sentence_splitting == "none" else None,
            eval_corpus=False,
            what=what,
        )
    if held.documents == 0 and held.sentences == 0:
        raise ValidationFailed(
            "replay_corpus_id",
            f"the {what} is also the reference corpus, but nothing of it would be held out for the reference "
            "evaluation (eval_fraction or eval_documents is 0, or it is too small to spare a part), and no "
            "instance may be both replayed and used to measure forgetting: give a separate reference corpus, "
            "or hold out part of this one",
        )


def check_base_model(hyperparameters: Hyperparameters, base: ResolvedBaseModel) -> None:
    """What the base model's files refuse, when they are here to read (not for hf: models, which the
    worker downloads; it checks them then): max_seq_length beyond the position embeddings, next-sentence
    prediction on a model of one token type, a tokenizer larger than the embedding matrix, whole-word
    masking without WordPiece continuations."""
    if base.local_path is None:
        return
    try:
        config = read_config(base.local_path)
    except BaseModelError:
        return  # the worker refuses it with the reason
    too_long = sequence_length_error(
        hyperparameters.max_seq_length, max_position_embeddings(config), str(base.spec)
    )
    if too_long is not None:
        raise ValidationFailed("hyperparameters.max_seq_length", f"max_seq_length {too_long}")
    one_segment = segment_types_error(hyperparameters.nsp, token_types(config))
    if one_segment is not None:
        raise ValidationFailed("hyperparameters.nsp", f"{base.spec}: {one_segment}")
    vocabulary = _tokenizer_vocabulary(base.local_path)
    if vocabulary is None:
        return
    rows = config.get("vocab_size")
    too_many = vocabulary_error(len(vocabulary), rows if isinstance(rows, int) else None)
    if too_many is not None:
        raise ValidationFailed("base_model", f"{base.spec}: {too_many}")
    try:
        check_whole_word_vocabulary(hyperparameters, vocabulary)
    except PreparationError as exc:
        raise ValidationFailed("hyperparameters.whole_word_mask", f"{base.spec}: {exc}") from None


def _tokenizer_vocabulary(directory: Path) -> frozenset[str] | None:
    """The tokenizer's tokens as its files list them, read once per version of the files (parsing a
    tokenizer.json takes about 40 ms; checkpoint and built-in files do not change)."""
    versions: list[tuple[int, int] | None] = []
    for name in TOKENIZER_FILES:
        try:
            stat = (directory / name).stat()
        except OSError:
            versions.append(None)
        else:
            versions.append((stat.st_mtime_ns, stat.st_size))
    return _remembered_vocabulary(str(directory), tuple(versions))


@lru_cache(maxsize=8)
def _remembered_vocabulary(
    directory: str, versions: tuple[tuple[int, int] | None, ...]
) -> frozenset[str] | None:
    return tokenizer_vocabulary(Path(directory))
