"""Downstream evaluations: models compared on a labelled dataset by fine-tuning or a linear probe, over
seeds, queued to the workers like runs (claim, lease, cancel, reaper: :mod:`app.evaluations.lifecycle`).
Statuses and their transitions: :mod:`app.evaluations.states`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Enum, ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from app.evaluations.states import EvaluationStatus
from app.models.base import Base, JSONType, UTCDateTime, utcnow

__all__ = ["Evaluation"]

# Stored as its value in a VARCHAR with a CHECK constraint, like a run's status.
EvaluationStatusType = Enum(
    EvaluationStatus,
    name="evaluation_status",
    native_enum=False,
    create_constraint=True,
    length=16,
    values_callable=lambda statuses: [status.value for status in statuses],
)


class Evaluation(Base):
    __tablename__ = "evaluations"
    __table_args__ = (
        Index(
            "ix_evaluations_tenant_id_created_at_id", "tenant_id", text("created_at DESC"), text("id DESC")
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    # Deleting a dataset is refused while an active evaluation uses it; a finished evaluation keeps its
    # results with the reference set to NULL.
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"), index=True)
    # The run this evaluation is the downstream comparison of (its ``downstream`` setting): one per run.
    run_id: Mapped[str | None] = mapped_column(
        ForeignKey("runs.id", ondelete="SET NULL"), unique=True, index=True
    )
    # The model specs as the client gave them, and as resolved at submission: [{"spec", "kind"}], the
    # normalized specs the worker resolves again to files (app.base_models.spec).
    models: Mapped[list[str]] = mapped_column(JSONType, default=list)
    resolved_models: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    method: Mapped[str] = mapped_column(String(16))
    seeds: Mapped[int]
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    status: Mapped[EvaluationStatus] = mapped_column(
        EvaluationStatusType, default=EvaluationStatus.QUEUED, index=True
    )
    attempt: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    worker_id: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # When the housekeeping's sweep last sent this queued evaluation's task again (None: only at created_at).
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    progress: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    # worker.evaluation.results.ComparisonResult as JSON, once it succeeded.
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
