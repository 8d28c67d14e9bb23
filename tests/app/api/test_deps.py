"""The request's dependencies: every route needs an API key (never logged), and a session always ends."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import anyio
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from app.api.deps import get_session
from tests.support import TenantKey, assert_error

PROTECTED = [
    ("GET", "/v1/corpora"),
    ("POST", "/v1/corpora"),
    ("GET", "/v1/corpora/corp_x"),
    ("DELETE", "/v1/corpora/corp_x"),
    ("GET", "/v1/checkpoints"),
    ("POST", "/v1/checkpoints"),
    ("GET", "/v1/checkpoints/ckpt_x"),
    ("DELETE", "/v1/checkpoints/ckpt_x"),
    ("GET", "/v1/models"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_every_route_needs_a_key(client: TestClient, method: str, path: str) -> None:
    response = client.request(method, path)
    error = assert_error(response, 401, "unauthorized")
    assert "Bearer" in error["message"]
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_keys_never_reach_the_logs(
    client: TestClient, alice: TenantKey, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client.get("/v1/corpora", headers=alice.headers)
    client.get("/v1/corpora", headers={"Authorization": "Bearer bpt_wrong"})
    assert alice.key not in caplog.text
    assert "bpt_wrong" not in caplog.text


# -- the request's session -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_cancelled_request_still_ends_its_session(session_factory: sessionmaker[Session]) -> None:
    """Cancellation (a client gone) reaches the session dependency at its yield: the session is still
    rolled back and closed, so its connection goes back to the pool rather than wait for the GC."""
    state = SimpleNamespace(session_factory=session_factory, db_slots=anyio.CapacityLimiter(1))
    dependency = get_session(SimpleNamespace(app=SimpleNamespace(state=state)))  # type: ignore[arg-type]
    session = await dependency.__anext__()
    session.execute(text("SELECT 1"))
    assert session.in_transaction() and state.db_slots.borrowed_tokens == 1
    cancelled = anyio.get_cancelled_exc_class()
    with anyio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(cancelled):
            await dependency.athrow(cancelled())
    assert not session.in_transaction()
    assert state.db_slots.borrowed_tokens == 0
