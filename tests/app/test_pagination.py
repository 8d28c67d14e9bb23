"""Cursor pagination: a cursor round-trips; every cursor the OpenAPI schema allows is accepted (the empty one
asks for the first page) and what it refuses is a validation error naming ``after``."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.pagination import CURSOR_PATTERN, ID_CURSOR_PATTERN, decode_cursor, decode_id_cursor, encode_cursor
from app.webhooks.schemas import WebhookCreate
from app.webhooks.service import create_webhook
from tests.support import TenantKey, assert_error, make_run

# Cursors each pattern allows, its extremes included.
ALLOWED = {
    CURSOR_PATTERN: ["", "0.a", "1714566615123456.corp_x", "9999999999999999." + "Zz09_-" * 6 + "ab"],
    ID_CURSOR_PATTERN: ["", "0", "9" * 18],
}


def test_cursor_round_trip() -> None:
    when = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
    assert decode_cursor(encode_cursor(when, "corp_x-Y_1")) == (when, "corp_x-Y_1")
    assert re.match(CURSOR_PATTERN, encode_cursor(when, "corp_x-Y_1"))
    assert decode_cursor("") is None and decode_id_cursor("") is None and decode_id_cursor("42") == 42


def test_every_cursor_the_schema_allows_is_accepted(
    client: TestClient, alice: TenantKey, session: Session
) -> None:
    run = make_run(session, alice.tenant)
    webhook = create_webhook(
        session, alice.tenant, WebhookCreate(url="https://hooks.example.com/bertpt", events=["run.*"])
    )
    paths = client.get("/openapi.json").json()["paths"]
    lists = []
    for path, operations in paths.items():
        after = [p for p in operations.get("get", {}).get("parameters", []) if p["name"] == "after"]
        if not after:
            continue
        lists.append(path)
        pattern = after[0]["schema"]["pattern"]
        url = path.replace("{run_id}", run.id).replace("{webhook_id}", webhook.id)
        first_page = client.get(url, headers=alice.headers).json()
        for cursor in ALLOWED[pattern]:
            assert re.match(pattern, cursor)
            response = client.get(url, params={"after": cursor}, headers=alice.headers)
            assert response.status_code == 200, (url, cursor, response.text)
        # An empty cursor is the first page, like none (what `after=${next_cursor ?? ""}` sends).
        assert client.get(url, params={"after": ""}, headers=alice.headers).json() == first_page
        for refused in ("garbage", " 1.a", "1.a/b", "1" * 19):
            assert not re.match(pattern, refused)
            response = client.get(url, params={"after": refused}, headers=alice.headers)
            assert_error(response, 422, "validation_error", "after")
    assert sorted(lists) == [
        "/v1/checkpoints",
        "/v1/corpora",
        "/v1/datasets",
        "/v1/evaluations",
        "/v1/runs",
        "/v1/runs/{run_id}/events",
        "/v1/webhooks",
        "/v1/webhooks/{webhook_id}/deliveries",
    ]
