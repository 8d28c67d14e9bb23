"""Uploaded pre-training corpora."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, JSONType, UTCDateTime, utcnow

__all__ = ["Corpus"]


class Corpus(Base):
    """A validated corpus file in storage. ``bytes`` and ``sha256`` are of the file as uploaded
    (compressed for gzip); the same content is stored once per tenant."""

    __tablename__ = "corpora"
    __table_args__ = (
        UniqueConstraint("tenant_id", "sha256"),
        Index("ix_corpora_tenant_id_created_at_id", "tenant_id", text("created_at DESC"), text("id DESC")),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(200))
    filename: Mapped[str] = mapped_column(String(255))
    storage_key: Mapped[str] = mapped_column(String(512))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    documents: Mapped[int] = mapped_column(BigInteger)
    sentences: Mapped[int] = mapped_column(BigInteger)
    stats: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    warnings: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
