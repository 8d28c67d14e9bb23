"""The client's side of webhooks: ``verify_webhook`` accepts what the service signs and refuses a tampered
body, another secret, a stale or future timestamp, a missing or malformed header; ``client.webhooks``
creates, lists, gets, deletes and reads the delivery log through the API, another tenant's being a 404."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta

import pytest

from app.models import utcnow
from app.webhooks.signing import new_secret, signed_headers
from bertpt.client import ApiError, Client, WebhookVerificationError, verify_webhook
from tests.support import TenantKey

BODY = json.dumps(
    {"type": "run.succeeded", "timestamp": "2026-12-08T10:00:00Z", "data": {"id": "run_x"}}
).encode()


def _signed(secret: str, body: bytes = BODY, *, age: timedelta = timedelta()) -> dict[str, str]:
    return signed_headers(secret, "msg_1", utcnow() - age, body)


def test_a_signed_delivery_verifies_and_gives_its_event() -> None:
    secret = new_secret()
    headers = _signed(secret)
    assert headers["webhook-signature"].startswith("v1,")
    assert verify_webhook(BODY, headers, secret) == json.loads(BODY)
    # Header names in any case, as web frameworks hand them over.
    assert verify_webhook(BODY, {name.title(): value for name, value in headers.items()}, secret)["type"]


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(
            lambda body, headers, secret: (body.replace(b"succeeded", b"failed"), headers, secret), id="body"
        ),
        pytest.param(lambda body, headers, secret: (body, headers, new_secret()), id="other-secret"),
        pytest.param(
            lambda body, headers, secret: (body, {**headers, "webhook-id": "msg_2"}, secret), id="id"
        ),
        pytest.param(
            lambda body, headers, secret: (
                body,
                {**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) + 1)},
                secret,
            ),
            id="timestamp",
        ),
        pytest.param(
            lambda body, headers, secret: (
                body,
                {k: v for k, v in headers.items() if k != "webhook-signature"},
                secret,
            ),
            id="no-signature",
        ),
        pytest.param(
            lambda body, headers, secret: (body, {**headers, "webhook-signature": "v1"}, secret),
            id="malformed",
        ),
        pytest.param(
            lambda body, headers, secret: (body, {**headers, "webhook-signature": "v1,!!"}, secret),
            id="not-base64",
        ),
        pytest.param(lambda body, headers, secret: (b"\xff" + body, headers, secret), id="not-utf8"),
    ],
)
def test_a_delivery_that_is_not_authentic_is_refused(
    tamper: Callable[..., tuple[bytes, dict[str, str], str]],
) -> None:
    secret = new_secret()
    body, headers, key = tamper(BODY, _signed(secret), secret)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(body, headers, key)


def test_a_replayed_or_future_delivery_is_refused_though_its_signature_is_right() -> None:
    secret = new_secret()
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify_webhook(BODY, _signed(secret, age=timedelta(minutes=10)), secret)
    with pytest.raises(WebhookVerificationError, match="too new"):
        verify_webhook(BODY, _signed(secret, age=-timedelta(minutes=10)), secret)
    assert verify_webhook(BODY, _signed(secret, age=timedelta(minutes=4)), secret)  # within the tolerance


def test_client_webhooks_create_list_get_delete_and_deliveries(
    api: Client, bob: TenantKey, make_client: Callable[..., Client]
) -> None:
    created = api.webhooks.create("http://127.0.0.1:9/hooks", ["run.*", "evaluation.failed"])
    assert created.secret.startswith("whsec_") and created.events == ["run.*", "evaluation.failed"]
    given = new_secret()
    assert api.webhooks.create("https://hooks.example.com/x", ["*"], secret=given).secret == given

    assert [webhook.id for webhook in api.webhooks.list()][-1] == created.id  # newest first
    assert api.webhooks.get(created.id).url == "http://127.0.0.1:9/hooks"
    assert api.webhooks.deliveries(created.id) == []

    with make_client(bob.key) as other:
        with pytest.raises(ApiError) as info:
            other.webhooks.get(created.id)
        assert (info.value.status_code, info.value.type) == (404, "not_found")
        assert other.webhooks.list() == []

    api.webhooks.delete(created.id)
    with pytest.raises(ApiError) as info:
        api.webhooks.deliveries(created.id)
    assert info.value.status_code == 404
    with pytest.raises(ApiError) as info:
        api.webhooks.create("ftp://example.com", ["run.*"])
    assert (info.value.status_code, info.value.param) == (422, "url")
