"""Signing a webhook delivery, the Standard Webhooks way (https://www.standardwebhooks.com), with the
``standardwebhooks`` package (the same one :func:`bertpt.client.verify_webhook` verifies with):

- ``webhook-id``: the message's id (the same on every retry);
- ``webhook-timestamp``: Unix seconds of this attempt (receivers refuse ones more than 5 minutes off);
- ``webhook-signature``: ``v1,<base64 of HMAC-SHA256(key, "<id>.<timestamp>.<body>")>``, the key being
  the base64-decoded part of the secret ``whsec_<base64>``.
"""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime

from standardwebhooks import Webhook as StandardWebhook

from app.webhooks.schemas import SECRET_MIN_BYTES, SECRET_PREFIX

__all__ = ["new_secret", "signed_headers"]


def new_secret() -> str:
    """A new signing secret: ``whsec_`` + the base64 of 24 random bytes (192 bits)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_MIN_BYTES)).decode()


def signed_headers(secret: str, message_id: str, timestamp: datetime, body: bytes) -> dict[str, str]:
    """The three headers that sign ``body`` (the exact bytes sent) as message ``message_id`` at
    ``timestamp`` (aware; whole seconds are signed)."""
    seconds = int(timestamp.astimezone(UTC).timestamp())
    signature = StandardWebhook(secret).sign(
        message_id, datetime.fromtimestamp(seconds, UTC), body.decode("utf-8")
    )
    return {"webhook-id": message_id, "webhook-timestamp": str(seconds), "webhook-signature": signature}
