"""Corpus analyses: a corpus seen through a model's tokenizer with a run's preparation settings, without
training (``POST /v1/corpora/{id}/analyze``), computed by a worker and kept: one row per (corpus, tokenizer,
preparation settings), which the estimates of runs (``POST /v1/runs/estimate``) read too."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import Enum, ForeignKey, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, JSONType, UTCDateTime, utcnow

__all__ = ["Analysis", "AnalysisStatus"]


class AnalysisStatus(enum.StrEnum):
    """queued -> running -> succeeded | failed. A queued or running analysis whose task was lost is sent
    again when it is next asked for (:mod:`app.estimates.analyses`)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def is_pending(self) -> bool:
        return self in (AnalysisStatus.QUEUED, AnalysisStatus.RUNNING)


AnalysisStatusType = Enum(
    AnalysisStatus,
    name="analysis_status",
    native_enum=False,
    create_constraint=True,
    length=16,
    values_callable=lambda statuses: [status.value for status in statuses],
)


class Analysis(Base):
    __tablename__ = "corpus_analyses"
    # The cache key: the same corpus through the same tokenizer files with the same preparation settings
    # gives the same figures, whatever base model carries the tokenizer.
    __table_args__ = (UniqueConstraint("corpus_id", "tokenizer_key", "settings_key"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    corpus_id: Mapped[str] = mapped_column(ForeignKey("corpora.id", ondelete="CASCADE"))
    # The base model whose tokenizer the worker loads (normalized spec), and what identifies that
    # tokenizer: the sha256 of its files (app.estimates.analyses.tokenizer_key).
    base_model: Mapped[str] = mapped_column(String(300))
    tokenizer_key: Mapped[str] = mapped_column(String(64))
    # sha256 of the preparation settings (PreparationConfig as JSON); the hyperparameters of the request
    # that created the row, defaults filled in (their preparation settings are the key's).
    settings_key: Mapped[str] = mapped_column(String(64))
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    status: Mapped[AnalysisStatus] = mapped_column(AnalysisStatusType, default=AnalysisStatus.QUEUED)
    # +1 at every claim; the worker's writes are fenced by it (a task sent again may run twice).
    attempt: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    # worker.pretraining.estimates.CorpusAnalysis as JSON, once it succeeded; {type, message, ...} if not.
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)  # when its task was last sent
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
