"""Uploaded labelled datasets (downstream evaluation)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, JSONType, UTCDateTime, utcnow

__all__ = ["Dataset"]


class Dataset(Base):
    """A validated labelled dataset in storage: its training file and, optionally, a test file.

    ``sha256`` identifies the content (the same content is stored once per tenant): the training file's
    digest, or with a test file the digest of the two files' hex digests (see
    :func:`app.datasets.service.content_sha256`). ``labels``: ``[{"label", "examples", "test_examples"}]``
    sorted by label. ``format``/``test_format``: ``tsv``, ``csv`` or ``jsonl``.
    """

    __tablename__ = "datasets"
    __table_args__ = (
        UniqueConstraint("tenant_id", "sha256"),
        Index("ix_datasets_tenant_id_created_at_id", "tenant_id", text("created_at DESC"), text("id DESC")),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(String(64))
    filename: Mapped[str] = mapped_column(String(255))
    format: Mapped[str] = mapped_column(String(8))
    storage_key: Mapped[str] = mapped_column(String(512))
    bytes: Mapped[int] = mapped_column(BigInteger)
    examples: Mapped[int] = mapped_column(BigInteger)
    test_filename: Mapped[str | None] = mapped_column(String(255))
    test_format: Mapped[str | None] = mapped_column(String(8))
    test_storage_key: Mapped[str | None] = mapped_column(String(512))
    test_bytes: Mapped[int | None] = mapped_column(BigInteger)
    test_examples: Mapped[int | None] = mapped_column(BigInteger)
    labels: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    has_text_pair: Mapped[bool] = mapped_column(Boolean)
    ignored_columns: Mapped[list[str]] = mapped_column(JSONType, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    @property
    def has_test_file(self) -> bool:
        return self.test_storage_key is not None
