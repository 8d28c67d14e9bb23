"""Webhooks: a tenant's endpoints, the outbox of events to deliver to them, and the log of every attempt.

- ``webhooks``: the endpoint (``url``), the event patterns it subscribes to, and the signing secret (kept
  to sign, shown once: at creation);
- ``webhook_messages``: the outbox. One row per event and subscribed webhook, written in the transaction
  that ends the run or evaluation (:mod:`app.webhooks.outbox`), so that an event is recorded exactly when
  the status change is committed, and read by the worker's dispatcher (:mod:`worker.webhooks`) from
  committed rows only. ``status`` pending -> delivered, or failed once its attempts are spent;
  ``next_attempt_at`` is when it is due (retried with exponential backoff);
- ``webhook_deliveries``: one row per attempt (status code, error, duration), the webhook's delivery log.

Deleting a webhook deletes its messages and deliveries (nothing more is sent to it).
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import Double, Enum, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, BigIntegerPK, JSONType, UTCDateTime, utcnow

__all__ = ["DeliveryOutcome", "MessageStatus", "Webhook", "WebhookDelivery", "WebhookMessage"]


class MessageStatus(enum.StrEnum):
    PENDING = "pending"  # due at next_attempt_at
    DELIVERED = "delivered"  # an attempt got a 2xx answer
    FAILED = "failed"  # WEBHOOK_MAX_ATTEMPTS attempts failed: given up


class DeliveryOutcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"


def _string_enum(cls: type[enum.StrEnum], name: str) -> Enum:
    """Stored as its value in a VARCHAR with a CHECK constraint, like a run's status."""
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda members: [member.value for member in members],
    )


class Webhook(Base):
    __tablename__ = "webhooks"
    __table_args__ = (
        Index("ix_webhooks_tenant_id_created_at_id", "tenant_id", text("created_at DESC"), text("id DESC")),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2000))
    # Event patterns: exact types or "<kind>.*" or "*" (app.webhooks.events).
    events: Mapped[list[str]] = mapped_column(JSONType, default=list)
    # "whsec_<base64 key>": the HMAC key of the signatures. Needed in the clear to sign; never served after
    # the creation's response.
    secret: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class WebhookMessage(Base):
    """One event to deliver to one webhook: a row of the outbox."""

    __tablename__ = "webhook_messages"
    __table_args__ = (
        # The dispatcher's query: pending messages that are due, oldest first.
        Index("ix_webhook_messages_status_next_attempt_at", "status", "next_attempt_at"),
    )

    # The event's id: the webhook-id header, the same on every attempt (receivers deduplicate on it).
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"), index=True)
    event_type: Mapped[str] = mapped_column(String(40))
    # The run or evaluation it is about (kept when that is deleted: the payload is a snapshot).
    subject_id: Mapped[str] = mapped_column(String(40))
    # The event's data (app.webhooks.schemas.RunSummary or EvaluationSummary) as of the status change.
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    status: Mapped[MessageStatus] = mapped_column(
        _string_enum(MessageStatus, "webhook_message_status"), default=MessageStatus.PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # When it is due; null once delivered or given up. A dispatcher that takes it moves it past the time its
    # attempt may last, so that another one retries it if this one dies mid-attempt.
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class WebhookDelivery(Base):
    """One attempt at delivering a message: the webhook's delivery log."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_webhook_id_id", "webhook_id", text("id DESC")),)

    id: Mapped[int] = mapped_column(BigIntegerPK, primary_key=True, autoincrement=True)
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    message_id: Mapped[str] = mapped_column(ForeignKey("webhook_messages.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[DeliveryOutcome] = mapped_column(
        _string_enum(DeliveryOutcome, "webhook_delivery_outcome")
    )
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[float] = mapped_column(Double)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # When the message is retried after this failed attempt; null: delivered, or given up.
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
