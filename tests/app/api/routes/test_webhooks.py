"""/v1/webhooks through the REST API: creation (the secret generated and shown once, or given), what is
refused (422 naming the field), tenant scoping (another tenant's webhook is a 404), deletion, and the
delivery log (newest first, paged)."""

from __future__ import annotations

import base64

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.models import DeliveryOutcome, WebhookDelivery, WebhookMessage
from app.webhooks.service import MAX_WEBHOOKS_PER_TENANT
from tests.support import TenantKey, assert_error

URL = "http://127.0.0.1:9/hooks"
EVENTS = ["run.succeeded", "run.failed", "run.cancelled", "evaluation.*"]


def _create(client: TestClient, who: TenantKey, **body: object) -> dict[str, object]:
    response = client.post("/v1/webhooks", json={"url": URL, "events": EVENTS, **body}, headers=who.headers)
    assert response.status_code == 201, response.text
    created: dict[str, object] = response.json()
    return created


def test_a_webhook_is_created_with_a_generated_secret_shown_only_then(
    client: TestClient, alice: TenantKey
) -> None:
    response = client.post("/v1/webhooks", json={"url": URL, "events": EVENTS}, headers=alice.headers)
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["id"].startswith("wh_")
    assert response.headers["Location"] == f"/v1/webhooks/{created['id']}"
    assert (created["url"], created["events"]) == (URL, EVENTS)
    secret = created["secret"]
    assert secret.startswith("whsec_") and len(base64.b64decode(secret.removeprefix("whsec_"))) == 24
    assert _create(client, alice)["secret"] != secret  # random, not derived

    shown = client.get(f"/v1/webhooks/{created['id']}", headers=alice.headers).json()
    assert "secret" not in shown and shown["events"] == EVENTS
    listed = client.get("/v1/webhooks", headers=alice.headers).json()
    assert all("secret" not in webhook for webhook in listed["data"])


def test_a_given_secret_is_kept_and_duplicate_patterns_are_dropped(
    client: TestClient, alice: TenantKey, session: Session
) -> None:
    secret = "whsec_" + base64.b64encode(bytes(range(32))).decode()
    created = _create(client, alice, secret=secret, events=["run.*", "run.*", "*"])
    assert created["secret"] == secret and created["events"] == ["run.*", "*"]


def test_what_cannot_be_a_webhook_is_refused_naming_the_field(client: TestClient, alice: TenantKey) -> None:
    def post(**body: object) -> object:
        return client.post("/v1/webhooks", json={"url": URL, "events": EVENTS, **body}, headers=alice.headers)

    for url in ("ftp://example.com/x", "file:///etc/passwd", "http://", "hooks.example.com", "http://u:p@h/"):
        assert_error(post(url=url), 422, "validation_error", "url")
    long_label = assert_error(post(url=f"http://{'a' * 64}.example.com/"), 422, "validation_error", "url")
    assert "1 to 63" in long_label["message"]  # a DNS label's limit, refused up front
    assert _create(client, alice, url=f"http://{'a' * 63}.example.com/")["url"]
    error = assert_error(post(events=["run.finished"]), 422, "validation_error", "events")
    assert "run.succeeded" in error["message"]  # says what exists
    assert_error(post(events=[]), 422, "validation_error", "events")
    assert_error(post(secret="not-a-secret"), 422, "validation_error", "secret")
    short = "whsec_" + base64.b64encode(b"x" * 8).decode()
    assert_error(post(secret=short), 422, "validation_error", "secret")
    assert_error(post(extra=1), 422, "validation_error", "extra")
    assert len(client.get("/v1/webhooks", headers=alice.headers).json()["data"]) == 1  # the 63 only


def test_webhooks_are_the_tenants_own(client: TestClient, alice: TenantKey, bob: TenantKey) -> None:
    webhook_id = _create(client, alice)["id"]
    assert client.get("/v1/webhooks", headers=bob.headers).json()["data"] == []
    for method, path in [
        ("GET", f"/v1/webhooks/{webhook_id}"),
        ("GET", f"/v1/webhooks/{webhook_id}/deliveries"),
        ("DELETE", f"/v1/webhooks/{webhook_id}"),
    ]:
        assert_error(client.request(method, path, headers=bob.headers), 404, "not_found")
    assert client.get(f"/v1/webhooks/{webhook_id}", headers=alice.headers).status_code == 200
    assert_error(client.get("/v1/webhooks"), 401, "unauthorized")


def test_a_deleted_webhook_is_gone_with_its_messages_and_deliveries(
    client: TestClient, alice: TenantKey, session: Session
) -> None:
    webhook_id = str(_create(client, alice)["id"])
    _add_delivery(session, webhook_id, "msg_a", attempt=1)
    response = client.delete(f"/v1/webhooks/{webhook_id}", headers=alice.headers)
    assert response.status_code == 204
    assert_error(client.get(f"/v1/webhooks/{webhook_id}", headers=alice.headers), 404, "not_found")
    assert_error(client.delete(f"/v1/webhooks/{webhook_id}", headers=alice.headers), 404, "not_found")
    session.expire_all()
    assert session.get(WebhookMessage, "msg_a") is None
    assert session.query(WebhookDelivery).filter_by(webhook_id=webhook_id).count() == 0


def test_a_tenant_has_at_most_so_many_webhooks(client: TestClient, alice: TenantKey) -> None:
    for _ in range(MAX_WEBHOOKS_PER_TENANT):
        _create(client, alice)
    response = client.post("/v1/webhooks", json={"url": URL, "events": EVENTS}, headers=alice.headers)
    assert_error(response, 409, "conflict")


def test_the_delivery_log_lists_attempts_newest_first_in_pages(
    client: TestClient, alice: TenantKey, session: Session
) -> None:
    webhook_id = str(_create(client, alice)["id"])
    _add_delivery(session, webhook_id, "msg_a", attempt=1, status_code=500)
    _add_delivery(session, webhook_id, "msg_a", attempt=2, status_code=204)

    path = f"/v1/webhooks/{webhook_id}/deliveries"
    first = client.get(path, params={"limit": 1}, headers=alice.headers).json()
    assert [(d["event_id"], d["attempt"], d["outcome"]) for d in first["data"]] == [("msg_a", 2, "succeeded")]
    assert first["data"][0]["event_type"] == "run.succeeded" and first["data"][0]["status_code"] == 204
    second = client.get(
        path, params={"limit": 1, "after": first["next_cursor"]}, headers=alice.headers
    ).json()
    assert [(d["attempt"], d["status_code"], d["outcome"]) for d in second["data"]] == [(1, 500, "failed")]
    assert second["data"][0]["error"] and second["next_cursor"] is None


def _add_delivery(
    session: Session, webhook_id: str, message_id: str, *, attempt: int, status_code: int = 204
) -> None:
    if session.get(WebhookMessage, message_id) is None:
        session.add(
            WebhookMessage(
                id=message_id,
                webhook_id=webhook_id,
                event_type="run.succeeded",
                subject_id="run_x",
                payload={},
            )
        )
        session.flush()
    ok = 200 <= status_code < 300
    session.add(
        WebhookDelivery(
            webhook_id=webhook_id,
            message_id=message_id,
            attempt=attempt,
            outcome=DeliveryOutcome.SUCCEEDED if ok else DeliveryOutcome.FAILED,
            status_code=status_code,
            error=None if ok else f"the endpoint answered HTTP {status_code}",
            duration_ms=12.5,
        )
    )
    session.commit()
