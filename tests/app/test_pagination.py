"""Cursor pagination: a cursor round-trips, a bad one is a validation error naming ``after``."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi.testclient import TestClient

from app.pagination import decode_cursor, encode_cursor
from tests.support import TenantKey, assert_error


def test_cursor_round_trip() -> None:
    when = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
    assert decode_cursor(encode_cursor(when, "corp_x")) == (when, "corp_x")


def test_bad_cursor_is_a_validation_error(client: TestClient, alice: TenantKey) -> None:
    assert_error(
        client.get("/v1/corpora?after=garbage", headers=alice.headers), 422, "validation_error", "after"
    )
