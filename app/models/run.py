"""Training runs and what they produce: metric points, events and checkpoints.

The API creates ``queued`` runs; the worker claims them (``queued -> preparing`` with one conditional
UPDATE), trains, and records metrics, events and checkpoints as it goes. Statuses and their transitions:
:mod:`app.runs.states`.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Double,
    Enum,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.models.base import Base, BigIntegerPK, JSONType, UTCDateTime, utcnow
from app.runs.states import RunStatus

if TYPE_CHECKING:
    from app.models.evaluation import Evaluation

__all__ = ["Run", "RunCheckpoint", "RunEvent", "RunMetric"]


# Stored as its value in a VARCHAR with a CHECK constraint (no PostgreSQL enum type to migrate), so that
# plain SQL such as the worker's claim (`SET status='preparing'`) reads naturally.
RunStatusType = Enum(
    RunStatus,
    name="run_status",
    native_enum=False,
    create_constraint=True,
    length=16,
    values_callable=lambda statuses: [status.value for status in statuses],
)


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_runs_tenant_id_created_at_id", "tenant_id", text("created_at DESC"), text("id DESC")),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[RunStatus] = mapped_column(RunStatusType, default=RunStatus.QUEUED, index=True)
    # A base-model spec as the client gave it: a built-in name, hf:<repo>, checkpoint:<id>, run:<id>[@step].
    base_model: Mapped[str] = mapped_column(String(300))
    # Deleting a corpus is refused while an active run uses it; a finished run keeps its record (and its
    # results) with the reference set to NULL.
    corpus_id: Mapped[str | None] = mapped_column(ForeignKey("corpora.id", ondelete="SET NULL"), index=True)
    eval_corpus_id: Mapped[str | None] = mapped_column(
        ForeignKey("corpora.id", ondelete="SET NULL"), index=True
    )
    reference_corpus_id: Mapped[str | None] = mapped_column(
        ForeignKey("corpora.id", ondelete="SET NULL"), index=True
    )
    # The general-domain corpus replayed against forgetting (hyperparameter replay_ratio), if any.
    replay_corpus_id: Mapped[str | None] = mapped_column(
        ForeignKey("corpora.id", ondelete="SET NULL"), index=True
    )
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    # "metadata" is reserved by SQLAlchemy's declarative classes: the attribute is ``metadata_``.
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    progress: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    latest: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    baseline: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    warnings: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    attempt: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    # ``attempt`` when its owner last resumed the run (0: never): the automatic retries of interrupted
    # attempts (MAX_ATTEMPTS) are counted from it.
    resumed_after_attempt: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    worker_id: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cancel_requested: Mapped[bool] = mapped_column(default=False, server_default=text("false"))
    output_storage_key: Mapped[str | None] = mapped_column(String(512))
    # When a worker's sweep last sent this queued run's task again (None: only the API's send, at
    # created_at). See app.runs.service.resend_stale_queued.
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The body's ``downstream`` settings (dataset_id, method, seeds, hyperparameters): when the run
    # succeeds, the worker queues the evaluation of its base model against its final model.
    downstream: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # What the run asks of its worker, as submitted with the default filled in: {"class": "cpu" | "gpu",
    # "devices": N}; its task goes to TRAINING_QUEUE.<class> (app.runs.routing). NULL: submitted before
    # resource classes existed (the default class).
    resources: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # That evaluation, once queued (its ``run_id`` is this run's): the run JSON shows its state.
    downstream_evaluation: Mapped[Evaluation | None] = relationship(
        primaryjoin="Run.id == foreign(Evaluation.run_id)", viewonly=True, uselist=False
    )


class RunMetric(Base):
    """One point of a metric curve. The primary key makes a retried batch idempotent: insert with
    ``ON CONFLICT DO NOTHING``."""

    __tablename__ = "run_metrics"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    split: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    step: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    value: Mapped[float] = mapped_column(Double)


class RunEvent(Base):
    __tablename__ = "run_events"
    __table_args__ = (Index("ix_run_events_run_id_id", "run_id", "id"),)

    id: Mapped[int] = mapped_column(BigIntegerPK, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    level: Mapped[str] = mapped_column(String(16))
    type: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


class RunCheckpoint(Base):
    __tablename__ = "run_checkpoints"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    step: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(512))
