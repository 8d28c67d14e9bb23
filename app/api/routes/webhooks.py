"""Webhooks: subscribe an endpoint to the ends of runs and evaluations, list, get, delete, and read the
delivery log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Response, status

from app.api.deps import CurrentTenant, SessionDep
from app.api.schemas import IdAfter, PageAfter, PageLimit, error_responses, id_path, json_response
from app.pagination import DEFAULT_LIMIT
from app.webhooks import service
from app.webhooks.events import EVENT_TYPES
from app.webhooks.schemas import (
    WebhookCreate,
    WebhookCreated,
    WebhookDeliveriesPublic,
    WebhookDeliveryPublic,
    WebhookPublic,
    WebhooksPublic,
)

# Every route takes a parameter, and refuses an invalid one with a 422 in the one error body.
router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=error_responses(401, 422))

WebhookId = Annotated[str, id_path("The webhook's id (wh_...).")]

_DELIVERY = (
    "Each event is POSTed as JSON `{type, timestamp, data}` (`data`: the run's summary: status, steps, "
    "final and baseline metrics, error, links; or the evaluation's), signed the Standard Webhooks way: "
    "headers `webhook-id` (the event's id, the same on every retry: deduplicate on it), `webhook-timestamp` "
    '(Unix seconds) and `webhook-signature` (`v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`, keyed '
    "by the secret). Verify with `bertpt.client.verify_webhook(body, headers, secret)` or any Standard "
    "Webhooks library. An answer other than 2xx within the timeout is retried with exponential backoff "
    "(see GET /v1/webhooks/{id}/deliveries). Events are recorded with the status change itself: none is "
    "lost, none is sent for a change that did not happen."
)


@router.post(
    "",
    response_model=WebhookCreated,
    status_code=status.HTTP_201_CREATED,
    summary="Create a webhook",
    description=f"Subscribes `url` (http:// or https://) to `events`: {', '.join(EVENT_TYPES)}, `run.*`, "
    "`evaluation.*` or `*`. The answer carries the signing `secret` (generated unless you give one): the "
    f"only time it is shown. {_DELIVERY} 409 when the tenant has {service.MAX_WEBHOOKS_PER_TENANT} webhooks "
    "already.",
    responses=error_responses(400, 409),
)
def create_webhook(
    body: WebhookCreate, response: Response, session: SessionDep, tenant: CurrentTenant
) -> WebhookCreated:
    webhook = service.create_webhook(session, tenant, body)
    response.headers["Location"] = f"/v1/webhooks/{webhook.id}"
    return WebhookCreated.model_validate(webhook)


@router.get("", response_model=WebhooksPublic, summary="List webhooks, newest first")
def list_webhooks(
    session: SessionDep, tenant: CurrentTenant, limit: PageLimit = DEFAULT_LIMIT, after: PageAfter = ""
) -> Response:
    page = service.list_webhooks(session, tenant, limit=limit, after=after)
    data = [WebhookPublic.model_validate(webhook) for webhook in page.items]
    return json_response(WebhooksPublic(data=data, next_cursor=page.next_cursor))


@router.get(
    "/{webhook_id}",
    response_model=WebhookPublic,
    summary="Get a webhook",
    description="Its URL and events (the secret is shown only when it is created).",
    responses=error_responses(404),
)
def get_webhook(webhook_id: WebhookId, session: SessionDep, tenant: CurrentTenant) -> WebhookPublic:
    return WebhookPublic.model_validate(service.get_webhook(session, tenant, webhook_id))


@router.delete(
    "/{webhook_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a webhook",
    description="Nothing more is sent to it, pending retries included; its delivery log goes with it.",
    responses=error_responses(404),
)
def delete_webhook(webhook_id: WebhookId, session: SessionDep, tenant: CurrentTenant) -> None:
    service.delete_webhook(session, tenant, webhook_id)


@router.get(
    "/{webhook_id}/deliveries",
    response_model=WebhookDeliveriesPublic,
    summary="The delivery log, newest attempt first",
    description="Every attempt at delivering an event to the webhook: its event, attempt number, outcome, "
    "the endpoint's status code or the error (connection refused, timeout), its duration, and when a "
    "failed event is tried again (null: delivered, or given up after the last attempt). Page with `after` "
    "(the `next_cursor` of the previous page).",
    responses=error_responses(404),
)
def list_deliveries(
    webhook_id: WebhookId,
    session: SessionDep,
    tenant: CurrentTenant,
    limit: PageLimit = DEFAULT_LIMIT,
    after: IdAfter = "",
) -> Response:
    rows, next_cursor = service.list_deliveries(session, tenant, webhook_id, limit=limit, after=after)
    data = [WebhookDeliveryPublic.from_attempt(delivery, message) for delivery, message in rows]
    return json_response(WebhookDeliveriesPublic(data=data, next_cursor=next_cursor))
