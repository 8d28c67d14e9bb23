"""Webhooks as the API sees them: create (the secret generated unless given, shown once), list, get,
delete, and the delivery log. Services never commit: the request's boundary does.

The events themselves are written by :mod:`app.webhooks.outbox` (with the status change that causes them)
and delivered by the worker's dispatcher (:mod:`worker.webhooks`).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.errors import Conflict, NotFound
from app.ids import new_id
from app.models import Tenant, Webhook, WebhookDelivery, WebhookMessage
from app.pagination import Page
from app.tenants.repository import lock_tenant
from app.webhooks import repository
from app.webhooks.schemas import WebhookCreate
from app.webhooks.signing import new_secret

__all__ = [
    "MAX_WEBHOOKS_PER_TENANT",
    "create_webhook",
    "delete_webhook",
    "get_webhook",
    "list_deliveries",
    "list_webhooks",
]

# Every run's end is checked against each of its tenant's webhooks, in the transaction that ends it.
MAX_WEBHOOKS_PER_TENANT = 20


def create_webhook(session: Session, tenant: Tenant, body: WebhookCreate) -> Webhook:
    """A new webhook of the tenant (``body`` is validated: an http(s) URL, event patterns that select
    events, a well-formed secret). Conflict when the tenant has ``MAX_WEBHOOKS_PER_TENANT`` already.

    The tenant's row is locked (until the request's transaction ends) before its webhooks are counted:
    two creations at once count one after the other, so neither goes past the limit."""
    lock_tenant(session, tenant.id)
    if repository.count_for_tenant(session, tenant.id) >= MAX_WEBHOOKS_PER_TENANT:
        raise Conflict(
            f"this tenant has {MAX_WEBHOOKS_PER_TENANT} webhooks, the most it may have; delete one first "
            "(one webhook may subscribe to several events)"
        )
    webhook = Webhook(
        id=new_id("wh"),
        tenant_id=tenant.id,
        url=body.url,
        events=list(body.events),
        secret=body.secret or new_secret(),
    )
    repository.add(session, webhook)
    return webhook


def get_webhook(session: Session, tenant: Tenant, webhook_id: str) -> Webhook:
    """The tenant's webhook; NotFound for an unknown id or another tenant's."""
    webhook = repository.get(session, tenant.id, webhook_id)
    if webhook is None:
        raise NotFound("webhook", webhook_id)
    return webhook


def list_webhooks(session: Session, tenant: Tenant, *, limit: int, after: str | None) -> Page[Webhook]:
    return repository.page(session, tenant.id, limit=limit, after=after)


def delete_webhook(session: Session, tenant: Tenant, webhook_id: str) -> None:
    """Delete the webhook with its pending messages and its delivery log: nothing more is sent to it (an
    attempt in flight at that moment is not logged)."""
    repository.delete(session, get_webhook(session, tenant, webhook_id))


def list_deliveries(
    session: Session, tenant: Tenant, webhook_id: str, *, limit: int, after: str | None
) -> tuple[list[tuple[WebhookDelivery, WebhookMessage]], str | None]:
    """The webhook's delivery attempts, newest first, each with its message; NotFound as
    :func:`get_webhook`."""
    webhook = get_webhook(session, tenant, webhook_id)
    return repository.deliveries_page(session, webhook.id, limit=limit, after=after)
