"""Queries on webhooks (scoped to a tenant), on the outbox of messages, and on the delivery log."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import MessageStatus, Webhook, WebhookDelivery, WebhookMessage
from app.pagination import Page, decode_id_cursor, fetch_page

__all__ = [
    "add",
    "add_delivery",
    "count_for_tenant",
    "delete",
    "deliveries_page",
    "due_messages",
    "for_tenant",
    "get",
    "message_for_update",
    "page",
]


def get(session: Session, tenant_id: str, webhook_id: str) -> Webhook | None:
    statement = select(Webhook).where(Webhook.tenant_id == tenant_id, Webhook.id == webhook_id)
    return session.scalars(statement).one_or_none()


def for_tenant(session: Session, tenant_id: str) -> list[Webhook]:
    """Every webhook of the tenant (what a status change checks its event against)."""
    return list(session.scalars(select(Webhook).where(Webhook.tenant_id == tenant_id)))


def count_for_tenant(session: Session, tenant_id: str) -> int:
    statement = select(func.count()).select_from(Webhook).where(Webhook.tenant_id == tenant_id)
    return session.scalar(statement) or 0


def page(session: Session, tenant_id: str, *, limit: int, after: str | None) -> Page[Webhook]:
    statement = select(Webhook).where(Webhook.tenant_id == tenant_id)
    return fetch_page(session, statement, Webhook, limit=limit, after=after)


def add(session: Session, webhook: Webhook) -> None:
    session.add(webhook)
    session.flush()


def delete(session: Session, webhook: Webhook) -> None:
    """The webhook, its messages and their deliveries (ON DELETE CASCADE)."""
    session.delete(webhook)
    session.flush()


def deliveries_page(
    session: Session, webhook_id: str, *, limit: int, after: str | None
) -> tuple[list[tuple[WebhookDelivery, WebhookMessage]], str | None]:
    """The webhook's delivery attempts with their message, newest first; ``after``: the id of the last
    attempt of the previous page. Returns the page and the cursor of the next one (None: the last)."""
    statement = (
        select(WebhookDelivery, WebhookMessage)
        .join(WebhookMessage, WebhookMessage.id == WebhookDelivery.message_id)
        .where(WebhookDelivery.webhook_id == webhook_id)
    )
    last_seen = decode_id_cursor(after) if after is not None else None
    if last_seen is not None:
        statement = statement.where(WebhookDelivery.id < last_seen)
    rows = session.execute(statement.order_by(WebhookDelivery.id.desc()).limit(limit + 1)).all()
    items = [(delivery, message) for delivery, message in rows[:limit]]
    return items, str(items[-1][0].id) if len(rows) > limit else None


def due_messages(session: Session, now: datetime, *, limit: int) -> Sequence[tuple[WebhookMessage, Webhook]]:
    """Pending messages due by ``now`` with their webhook, oldest due first, locked ``FOR UPDATE SKIP
    LOCKED``: several dispatchers never take the same message. Only committed rows are seen (the
    transaction that ends a run has committed its messages, or they do not exist)."""
    statement = (
        select(WebhookMessage, Webhook)
        .join(Webhook, Webhook.id == WebhookMessage.webhook_id)
        .where(WebhookMessage.status == MessageStatus.PENDING, WebhookMessage.next_attempt_at <= now)
        .order_by(WebhookMessage.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True, of=WebhookMessage)
    )
    return [(message, webhook) for message, webhook in session.execute(statement).all()]


def message_for_update(session: Session, message_id: str) -> WebhookMessage | None:
    """The message, locked; None once it is gone (its webhook was deleted meanwhile)."""
    statement = select(WebhookMessage).where(WebhookMessage.id == message_id).with_for_update()
    return session.scalars(statement).one_or_none()


def add_delivery(session: Session, **values: Any) -> WebhookDelivery:
    delivery = WebhookDelivery(**values)
    session.add(delivery)
    session.flush()
    return delivery
