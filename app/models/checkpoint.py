"""Uploaded base checkpoints (Hugging Face ``save_pretrained`` directories)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, JSONType, UTCDateTime, utcnow

__all__ = ["Checkpoint"]


class Checkpoint(Base):
    """An extracted, validated checkpoint directory in storage. ``bytes`` is the size of the stored
    files, ``sha256`` the digest of the archive as uploaded; ``config`` a summary of config.json."""

    __tablename__ = "checkpoints"
    __table_args__ = (
        Index(
            "ix_checkpoints_tenant_id_created_at_id", "tenant_id", text("created_at DESC"), text("id DESC")
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(200))
    storage_key: Mapped[str] = mapped_column(String(512))
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    has_pretraining_heads: Mapped[bool]
    parameters: Mapped[int] = mapped_column(BigInteger)
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
