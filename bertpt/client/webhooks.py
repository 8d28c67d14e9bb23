"""Webhooks from the client side: the ``client.webhooks`` resource, and :func:`verify_webhook` for the
receiving end (a web handler that gets bertpt's deliveries).

Deliveries follow the Standard Webhooks convention (https://www.standardwebhooks.com): the headers
``webhook-id`` (the event's id, the same on every retry: deduplicate on it), ``webhook-timestamp`` (Unix
seconds) and ``webhook-signature`` (``v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">``, keyed by the
secret ``whsec_<base64 key>`` shown when the webhook was created). Verification is the
``standardwebhooks`` package's: any other Standard Webhooks library verifies them too.
"""

from __future__ import annotations

import binascii
import builtins
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from standardwebhooks import Webhook
from standardwebhooks import WebhookVerificationError as _StandardVerificationError

from app.webhooks.schemas import (
    WebhookCreated,
    WebhookDeliveriesPublic,
    WebhookDeliveryPublic,
    WebhookPublic,
    WebhooksPublic,
)

if TYPE_CHECKING:
    from bertpt.client.client import Client

__all__ = ["WebhookVerificationError", "WebhooksResource", "verify_webhook"]


class WebhookVerificationError(Exception):
    """The delivery is not authentic or not fresh: a header missing, the signature not the secret's over
    this body, or the timestamp more than 5 minutes from now (a replay). Answer it with a 4xx and ignore
    it."""


def verify_webhook(payload: bytes, headers: Mapping[str, str], secret: str) -> dict[str, Any]:
    """The event of a delivery (``{"type", "timestamp", "data"}``) once its signature and timestamp are
    verified.

    ``payload`` is the request body exactly as received (bytes, before any JSON parsing); ``headers`` the
    request's headers (any case); ``secret`` the webhook's ``whsec_...`` secret. Raises
    :class:`WebhookVerificationError` when the delivery is not authentic, or its timestamp is more than
    five minutes away from this machine's clock.
    """
    try:
        event = Webhook(secret).verify(payload, dict(headers))
    except _StandardVerificationError as exc:
        raise WebhookVerificationError(str(exc)) from None
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        # A malformed signature header or secret ("v1" with no comma, bad base64), or a body not UTF-8.
        raise WebhookVerificationError(f"malformed delivery or secret ({exc})") from None
    if not isinstance(event, dict):
        raise WebhookVerificationError("the body is not a JSON object")
    return event


class WebhooksResource:
    """``client.webhooks``: create, list, get and delete your webhooks, and read their delivery logs."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def create(self, url: str, events: Sequence[str], secret: str | None = None) -> WebhookCreated:
        """Subscribe ``url`` to ``events`` (``run.succeeded``, ``run.*``, ``evaluation.*``, ``*``...). The
        answer carries the signing secret (generated unless given): the only time it is shown. Raises
        ApiError 422 (``url``: not http(s); ``events``: a pattern that selects no event; ``secret``:
        not ``whsec_`` + base64 of 24 to 64 bytes) or 409 (the tenant has as many webhooks as it may)."""
        body: dict[str, Any] = {"url": url, "events": list(events)}
        if secret is not None:
            body["secret"] = secret
        return WebhookCreated.model_validate(self._client.request("POST", "/v1/webhooks", json=body).json())

    def list(self) -> list[WebhookPublic]:
        """Every webhook of your tenant, newest first (all pages)."""
        return self._client.all_pages("/v1/webhooks", WebhooksPublic.model_validate)

    def get(self, webhook_id: str) -> WebhookPublic:
        """One webhook (without its secret); ApiError 404 when your tenant has none of that id."""
        return WebhookPublic.model_validate(self._client.request("GET", f"/v1/webhooks/{webhook_id}").json())

    def delete(self, webhook_id: str) -> None:
        """Delete a webhook: nothing more is sent to it, pending retries included. ApiError 404 as
        :meth:`get`."""
        self._client.request("DELETE", f"/v1/webhooks/{webhook_id}")

    def deliveries(self, webhook_id: str) -> builtins.list[WebhookDeliveryPublic]:
        """Its delivery log, newest attempt first (all pages): each attempt's outcome, status code, error
        and duration, and when a failed event is tried again. ApiError 404 as :meth:`get`."""
        path = f"/v1/webhooks/{webhook_id}/deliveries"
        return self._client.all_pages(path, WebhookDeliveriesPublic.model_validate)
