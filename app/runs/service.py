"""Runs as the API sees them: submission, queries, cancellation, deletion, metrics, events, downloads.

The worker's side (claim, progress, metrics, checkpoints, finish) is :mod:`app.runs.lifecycle`; the live
stream :mod:`app.runs.live` and :mod:`app.runs.stream`. Services never commit: side effects that need
the rows to be durable (sending the Celery task, deleting files, publishing on the live stream) are
registered with :func:`~app.db.on_commit`.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.base_models.service import ResolvedBaseModel, final_model_key, resolve_base_model, run_output_key
from app.config import Settings
from app.db import on_commit, session_scope
from app.errors import Conflict, NotFound, ValidationFailed
from app.ids import new_id
from app.models import Corpus, Run, RunCheckpoint, RunEvent, RunStatus, Tenant, utcnow
from app.pagination import Page
from app.runs import repository
from app.runs.archives import ArchiveSource, StoredArchive, ensure_archive
from app.runs.downsample import Bucket, Point, bucket_width, coarsen, max_buckets, points_from_buckets
from app.runs.lifecycle import add_event
from app.runs.live import MessageType, event_data
from app.runs.schemas import MetricSeries, MetricsPublic, RunCreate
from app.storage import Storage
from worker.pretraining.hyperparameters import Hyperparameters, load_hyperparameters

__all__ = [
    "MAX_METADATA_BYTES",
    "CreatedRun",
    "LivePublisher",
    "MetricBucketCache",
    "MetricsQuery",
    "RunEnqueuer",
    "cancel_run",
    "checkpoint_archive",
    "create_run",
    "delete_run",
    "get_metrics",
    "get_run",
    "list_checkpoints",
    "list_events",
    "list_runs",
    "model_archive",
    "run_is_terminal",
]

MAX_METADATA_BYTES = 16 << 10
MAX_IDEMPOTENCY_KEY_CHARS = 255

# Sends ``bertpt.runs.execute(run_id)`` (app.queue.enqueue_run in production, a recorder in tests).
RunEnqueuer = Callable[[str], object]
# Appends a message to a run's live stream (app.runs.live.publish with a client).
LivePublisher = Callable[[str, MessageType, dict[str, Any]], object]


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
    base = resolve_base_model(session, tenant, body.base_model, settings=settings, storage=storage)
    _check_sequence_length(hyperparameters, base)

    run = Run(
        id=new_id("run"),
        tenant_id=tenant.id,
        name=body.name or f"{base.spec} on {corpus.name}"[:200],
        status=RunStatus.QUEUED,
        base_model=base.spec,
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
    add_event(session, run.id, "queued", f"submitted: {base.spec} on corpus {corpus.id}")
    run_id = run.id

    def send() -> None:
        enqueue(run_id)

    on_commit(session, send)
    return CreatedRun(run=run, created=True)


def resend_stale_queued(
    session: Session, *, older_than: timedelta, enqueue: RunEnqueuer, limit: int = 100
) -> list[str]:
    """Send again the task of every run still queued ``older_than`` after its last send (its submission,
    or this function's previous send), and return their ids.

    The API sends a run's task once, after the commit; if that send failed (the broker was unreachable),
    or the message was lost, the run would stay queued for ever. Sending again is always safe: a worker
    claims a run with one conditional UPDATE, so a duplicate message does nothing. Rows are taken with
    ``SKIP LOCKED`` (several workers sweep at once without sending twice) and sent before the commit: a
    failed send leaves ``sent_at`` as it was, to be tried at the next sweep.
    """
    cutoff = utcnow() - older_than
    runs = repository.stale_queued(session, cutoff, limit=limit)
    for run in runs:
        enqueue(run.id)
        run.sent_at = utcnow()
    session.flush()
    return [run.id for run in runs]


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


def _check_sequence_length(hyperparameters: Hyperparameters, base: ResolvedBaseModel) -> None:
    """max_seq_length must fit the model's position embeddings, when its config.json can be read here
    (not for hf: models, which the worker downloads; it checks them again)."""
    positions = _max_position_embeddings(base.local_path)
    if positions is not None and hyperparameters.max_seq_length > positions:
        raise ValidationFailed(
            "hyperparameters.max_seq_length",
            f"max_seq_length {hyperparameters.max_seq_length} exceeds the {positions} position embeddings of "
            f"{base.spec}; use at most {positions}",
        )


def _max_position_embeddings(directory: Path | None) -> int | None:
    if directory is None:
        return None
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    positions = config.get("max_position_embeddings") if isinstance(config, dict) else None
    return positions if isinstance(positions, int) and positions > 0 else None


# -- queries, cancellation, deletion -----------------------------------------------------------------------


def get_run(session: Session, tenant: Tenant, run_id: str, *, for_update: bool = False) -> Run:
    run = repository.get(session, tenant.id, run_id, for_update=for_update)
    if run is None:
        raise NotFound("run", run_id)
    return run


def list_runs(
    session: Session, tenant: Tenant, *, statuses: Sequence[RunStatus], limit: int, after: str | None
) -> Page[Run]:
    return repository.page(session, tenant.id, statuses=statuses, limit=limit, after=after)


def run_is_terminal(session_factory: Callable[[], Session], run_id: str) -> bool:
    """Whether the run has ended (or is gone), in a short transaction of its own."""
    with session_scope(session_factory) as session:
        status = repository.status_of(session, run_id)
    return status is None or status.is_terminal


def cancel_run(session: Session, tenant: Tenant, run_id: str, *, publish: LivePublisher) -> Run:
    """Cancel a run; idempotent. A queued run is cancelled at once (the worker's claim only takes queued
    runs, and waits on this row lock); a preparing or running one is asked to stop and becomes
    ``cancelling`` until the worker has saved a checkpoint and stopped; any other is returned as is."""
    run = get_run(session, tenant, run_id, for_update=True)
    previous = run.status
    if previous == RunStatus.QUEUED:
        run.status = RunStatus.CANCELLED
        run.finished_at = utcnow()
        run.cancel_requested = True
        event = add_event(
            session, run.id, "cancelled", "cancelled before it started", data={"previous": previous.value}
        )
    elif previous in (RunStatus.PREPARING, RunStatus.RUNNING):
        run.status = RunStatus.CANCELLING
        run.cancel_requested = True
        event = add_event(
            session,
            run.id,
            "cancel_requested",
            "cancellation requested: the run stops after its current step and saves a checkpoint",
            data={"previous": previous.value},
        )
    else:
        return run
    session.flush()
    event_message = event_data(event)
    status_message = {"status": run.status.value, "progress": run.progress or {}, "error": None}

    def announce() -> None:
        publish(run_id, "event", event_message)
        publish(run_id, "status", status_message)

    on_commit(session, announce)
    return run


def delete_run(session: Session, storage: Storage, tenant: Tenant, run_id: str) -> None:
    """Delete a finished run with its metrics, events and checkpoints now, and its files once that is
    committed. Conflict while it is not finished, or while an active run starts from its model."""
    run = get_run(session, tenant, run_id, for_update=True)
    if not run.status.is_terminal:
        raise Conflict(
            f"run {run.id!r} is {run.status.value}; only a finished run can be deleted (cancel it first: "
            f"POST /v1/runs/{run.id}/cancel)"
        )
    users = repository.active_runs_based_on(session, tenant.id, run.id)
    if users:
        raise Conflict(
            f"run {run.id!r} is the base model of active run(s) {', '.join(users[:5])}; cancel them or wait "
            "for them to finish, then delete it"
        )
    keys = _outermost(
        {
            run_output_key(run),
            final_model_key(run),
            *(c.storage_key for c in repository.checkpoints(session, run.id)),
        }
    )
    repository.delete(session, run)

    def remove_files() -> None:
        for key in keys:
            storage.delete(key)

    on_commit(session, remove_files)


def _outermost(keys: set[str]) -> list[str]:
    """The keys not inside another one (deleting a directory deletes what it holds)."""
    return sorted(key for key in keys if not any(key.startswith(f"{other}/") for other in keys))


# -- events and checkpoints ---------------------------------------------------------------------------------


def list_events(
    session: Session, tenant: Tenant, run_id: str, *, after: str | None, limit: int
) -> Page[RunEvent]:
    """The run's events after the cursor ``after`` (an event id), oldest first."""
    run = get_run(session, tenant, run_id)
    after_id = None
    if after is not None:
        if not after.isdigit() or len(after) > 19:
            raise ValidationFailed(
                "after", "invalid cursor: pass the next_cursor of the previous page unchanged"
            )
        after_id = int(after)
    events = list(repository.events_after(session, run.id, after=after_id, limit=limit + 1))
    items = events[:limit]
    return Page(items=items, next_cursor=str(items[-1].id) if len(events) > limit else None)


def list_checkpoints(session: Session, tenant: Tenant, run_id: str) -> Sequence[RunCheckpoint]:
    run = get_run(session, tenant, run_id)
    return repository.checkpoints(session, run.id)


def checkpoint_archive(
    session: Session,
    storage: Storage,
    tenant: Tenant,
    run_id: str,
    step: int,
    *,
    include_training_state: bool,
) -> StoredArchive:
    run = get_run(session, tenant, run_id)
    checkpoint = repository.checkpoint(session, run.id, step)
    if checkpoint is None:
        raise NotFound("checkpoint", f"{run.id}@{step}", param="step")
    return _run_archive(
        storage,
        run,
        checkpoint.storage_key,
        f"{run.id}-checkpoint-{step}",
        include_training_state=include_training_state,
        missing=f"the files of checkpoint {step} of run {run.id} are no longer in storage (rotated away?); "
        f"list the kept ones with GET /v1/runs/{run.id}/checkpoints",
    )


def model_archive(
    session: Session, storage: Storage, tenant: Tenant, run_id: str, *, include_training_state: bool
) -> StoredArchive:
    run = get_run(session, tenant, run_id)
    if run.status != RunStatus.SUCCEEDED:
        raise Conflict(
            f"run {run.id!r} is {run.status.value}: only a succeeded run has a final model (download one of "
            "its checkpoints instead)"
        )
    return _run_archive(
        storage,
        run,
        final_model_key(run),
        f"{run.id}-model",
        include_training_state=include_training_state,
        missing=f"the final model of run {run.id} is missing from storage; ask the operator",
    )


def _run_archive(
    storage: Storage, run: Run, directory_key: str, root: str, *, include_training_state: bool, missing: str
) -> StoredArchive:
    """The .tar.gz of one of ``run``'s directories, cached beside its output; Conflict(``missing``) when the
    directory is gone from storage."""
    source = ArchiveSource(
        directory_key=directory_key,
        root=root,
        cache_prefix=f"{run_output_key(run)}/archives",
        include_training_state=include_training_state,
    )
    try:
        return ensure_archive(storage, source)
    except FileNotFoundError:
        raise Conflict(missing) from None


# -- metrics ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricsQuery:
    names: Sequence[str] | None = None
    split: str | None = None
    since_step: int | None = None
    until_step: int | None = None
    max_points: int = 1000


@dataclass(frozen=True)
class _CachedSeries:
    first_step: int
    last_step: int
    width: int
    buckets: list[Bucket]
    final: bool  # computed after the run ended: the series cannot change any more
    # The series drawn from these buckets, by (first point, last point): repeated polls of an unchanged
    # series reuse it.
    drawn: dict[tuple[Point, Point], list[Point]] = field(default_factory=dict, compare=False)

    @property
    def tail_start(self) -> int:
        """The first step of the last bucket: where new points may still land."""
        return self.buckets[-1].index * self.width


BucketFetcher = Callable[[int, int], list[Bucket]]  # (width, since_step) -> buckets up to the last step


class MetricBucketCache:
    """Min/max buckets of whole series, kept between requests (per API process, least recently used
    evicted), so that a chart polled by many clients costs index probes rather than a pass over every
    point.

    Metrics are appended by step, and buckets nest (:mod:`app.runs.downsample`), so when a series grows
    only its last bucket and the new ones are aggregated again, and when it outgrows its bucket width,
    cached buckets are merged pairwise; while its first and last steps stay the same it is not read at
    all. A run's series are recomputed once from scratch after the run ends, so the final picture is
    exact even if points arrived out of order meanwhile (a retried batch below the newest step).
    """

    def __init__(self, max_series: int = 4096) -> None:
        self.max_series = max_series
        self._entries: OrderedDict[tuple[Any, ...], _CachedSeries] = OrderedDict()
        self._locks: dict[tuple[Any, ...], threading.Lock] = {}
        self._guard = threading.Lock()

    def buckets(
        self,
        key: tuple[Any, ...],
        first_step: int,
        last_step: int,
        allowed: int,
        *,
        final: bool,
        fetch: BucketFetcher,
    ) -> list[Bucket]:
        width = bucket_width(first_step, last_step, allowed)
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # one computation per series at a time; the others then find it cached
            with self._guard:
                entry = self._entries.get(key)
            # Computed while the run was still going and it has ended since: recompute once, exactly.
            if entry is None or (final and not entry.final):
                buckets = fetch(width, first_step)
            elif (entry.first_step, entry.last_step) == (first_step, last_step):
                buckets = entry.buckets  # nothing new
            elif entry.first_step == first_step and entry.width <= width and last_step >= entry.tail_start:
                buckets = entry.buckets[:-1] + fetch(entry.width, entry.tail_start)
                if width > entry.width:
                    buckets = coarsen(buckets, entry.width, width)
            else:
                buckets = fetch(width, first_step)
            self._store(key, _CachedSeries(first_step, last_step, width, buckets, final))
        return buckets

    def points(self, key: tuple[Any, ...], buckets: list[Bucket], first: Point, last: Point) -> list[Point]:
        """:func:`points_from_buckets`, remembered while the series cached under ``key`` is unchanged
        (``buckets`` is what :meth:`buckets` returned for it)."""
        with self._guard:
            entry = self._entries.get(key)
        if entry is None or entry.buckets is not buckets:
            return points_from_buckets(buckets, first, last)
        drawn = entry.drawn.get((first, last))
        if drawn is None:
            drawn = entry.drawn[(first, last)] = points_from_buckets(buckets, first, last)
        return drawn

    def _store(self, key: tuple[Any, ...], entry: _CachedSeries) -> None:
        with self._guard:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_series:
                old, _ = self._entries.popitem(last=False)
                self._locks.pop(old, None)


def get_metrics(
    session: Session, tenant: Tenant, run_id: str, query: MetricsQuery, *, cache: MetricBucketCache
) -> MetricsPublic:
    """The run's metric series, each downsampled to at most ``max_points`` points (min/max per bucket,
    first and last point kept); points whose value is not finite come back as null."""
    run = get_run(session, tenant, run_id)
    if query.since_step is not None and query.until_step is not None and query.since_step > query.until_step:
        raise ValidationFailed("since_step", "since_step is after until_step")
    extents = repository.metric_extents(
        session,
        run.id,
        split=query.split,
        names=query.names,
        since_step=query.since_step,
        until_step=query.until_step,
    )
    series = []
    for extent in extents:
        drawn = _series_points(session, run, extent, query, cache)
        points = [(step, value if math.isfinite(value) else None) for step, value in drawn]
        # Built from our own rows, already of the schema's types: not validated again, point by point.
        series.append(MetricSeries.model_construct(name=extent.name, split=extent.split, points=points))
    return MetricsPublic.model_construct(series=series)


def _series_points(
    session: Session,
    run: Run,
    extent: repository.SeriesExtent,
    query: MetricsQuery,
    cache: MetricBucketCache,
) -> list[Point]:
    first, last = extent.first, extent.last

    def points() -> list[Point]:
        return repository.metric_points(
            session, run.id, extent.split, extent.name, since_step=first[0], until_step=last[0]
        )

    if last[0] - first[0] + 1 <= query.max_points:  # no more points than steps: they all fit
        return points()

    def fetch(width: int, since_step: int) -> list[Bucket]:
        return repository.metric_buckets(
            session, run.id, extent.split, extent.name, width=width, since_step=since_step, until_step=last[0]
        )

    allowed = max_buckets(query.max_points)
    if query.since_step is None and query.until_step is None:
        key = (run.id, extent.split, extent.name, allowed)
        buckets = cache.buckets(key, first[0], last[0], allowed, final=run.status.is_terminal, fetch=fetch)
        draw: Callable[[list[Bucket], Point, Point], list[Point]] = partial(cache.points, key)
    else:
        buckets = fetch(bucket_width(first[0], last[0], allowed), first[0])
        draw = points_from_buckets
    if sum(bucket.count for bucket in buckets) <= query.max_points:
        return points()
    return draw(buckets, first, last)
