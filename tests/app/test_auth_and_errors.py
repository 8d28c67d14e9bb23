"""Authentication, tenant scoping and the error body of every failure."""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace

import anyio
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from app.api.deps import get_session
from app.api.main import create_app
from app.config import Settings
from app.errors import Unauthorized
from app.models import ApiKey
from app.storage import LocalStorage
from app.tenants.service import Authenticator, create_api_key, revoke_api_key
from tests.support import TenantKey, assert_error
from worker.pretraining.hyperparameters import load_hyperparameters

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


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer bpt_not-a-real-key-000000000000000000000000000000",
        "Bearer nonsense",
        "Basic dXNlcjpwYXNz",
        "Bearer",
    ],
)
def test_bad_keys_are_refused(client: TestClient, alice: TenantKey, authorization: str) -> None:
    assert_error(client.get("/v1/corpora", headers={"Authorization": authorization}), 401, "unauthorized")


def test_revoked_key_is_refused(client: TestClient, session: Session, alice: TenantKey) -> None:
    assert client.get("/v1/corpora", headers=alice.headers).status_code == 200
    second = create_api_key(session, alice.tenant)
    revoke_api_key(session, second.api_key.id)
    session.commit()
    response = client.get("/v1/corpora", headers={"Authorization": f"Bearer {second.key}"})
    assert_error(response, 401, "unauthorized")
    assert client.get("/v1/corpora", headers=alice.headers).status_code == 200  # the other key still works


def test_only_the_hash_of_a_key_is_stored(session: Session, alice: TenantKey) -> None:
    issued = create_api_key(session, alice.tenant)
    assert issued.key.startswith("bpt_") and len(issued.key) == 4 + 43
    assert issued.api_key.prefix == issued.key[:12]
    assert issued.key not in (issued.api_key.key_hash, issued.api_key.id)


def test_keys_never_reach_the_logs(
    client: TestClient, alice: TenantKey, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client.get("/v1/corpora", headers=alice.headers)
    client.get("/v1/corpora", headers={"Authorization": "Bearer bpt_wrong"})
    assert alice.key not in caplog.text
    assert "bpt_wrong" not in caplog.text


def test_unknown_route_is_a_json_404(client: TestClient) -> None:
    assert_error(client.get("/v1/nothing-here"), 404, "not_found")


def test_wrong_method_is_a_json_405(client: TestClient, alice: TenantKey) -> None:
    assert_error(client.put("/v1/corpora", headers=alice.headers), 405, "method_not_allowed")


@pytest.mark.parametrize(
    ("query", "param"), [("limit=0", "limit"), ("limit=abc", "limit"), ("limit=101", "limit")]
)
def test_request_validation_errors_name_the_field(
    client: TestClient, alice: TenantKey, query: str, param: str
) -> None:
    error = assert_error(
        client.get(f"/v1/corpora?{query}", headers=alice.headers), 422, "validation_error", param
    )
    assert error["message"].startswith(f"{param}: ")


def test_bad_cursor_is_a_validation_error(client: TestClient, alice: TenantKey) -> None:
    assert_error(
        client.get("/v1/corpora?after=garbage", headers=alice.headers), 422, "validation_error", "after"
    )


def test_openapi_and_docs(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/v1/corpora", "/v1/corpora/{corpus_id}", "/v1/checkpoints", "/v1/models", "/readyz"} <= set(
        spec["paths"]
    )
    upload = spec["paths"]["/v1/corpora"]["post"]
    assert "multipart/form-data" in upload["requestBody"]["content"]
    assert {"CorpusPublic", "CorporaPublic", "CheckpointPublic", "ErrorResponse"} <= set(
        spec["components"]["schemas"]
    )
    assert spec["paths"]["/v1/corpora"]["get"]["tags"] == ["corpora"]
    assert "bearer" in str(spec["components"]["securitySchemes"]).lower()
    assert client.get("/docs").status_code == 200


def test_hyperparameter_and_unexpected_errors_keep_the_body_shape(app: FastAPI) -> None:
    def bad_hyperparameters() -> None:
        load_hyperparameters({"learning_rate": -1.0})

    def crash() -> None:
        raise RuntimeError("secret internals")

    app.add_api_route("/test/hyperparameters", bad_hyperparameters)
    app.add_api_route("/test/crash", crash)
    with TestClient(app, raise_server_exceptions=False) as client:
        error = assert_error(
            client.get("/test/hyperparameters"), 422, "validation_error", "hyperparameters.learning_rate"
        )
        assert "learning_rate" in error["message"]
        error = assert_error(client.get("/test/crash"), 500, "internal_error")
        assert "secret" not in error["message"]


# -- the API process's memory of accepted keys -----------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _revoke_all_keys_of(session: Session, who: TenantKey) -> None:
    for api_key in session.scalars(select(ApiKey).where(ApiKey.tenant_id == who.tenant.id)):
        revoke_api_key(session, api_key.id)
    session.commit()


def test_an_accepted_key_is_remembered_for_the_ttl_then_checked_again(
    session: Session, alice: TenantKey
) -> None:
    clock = FakeClock()
    authenticator = Authenticator(10.0, clock=clock)
    assert authenticator.cached(alice.key) is None  # never seen
    tenant = authenticator.authenticate(session, alice.key)
    assert tenant.id == alice.tenant.id
    assert tenant not in session  # detached: a rollback of that request's session cannot expire it
    session.rollback()
    assert authenticator.cached(alice.key) is tenant and tenant.name == "alice"

    _revoke_all_keys_of(session, alice)
    clock.now += 9.9
    assert authenticator.cached(alice.key) is tenant  # the documented price: revocation lags the TTL
    clock.now += 0.2
    assert authenticator.cached(alice.key) is None
    with pytest.raises(Unauthorized):
        authenticator.authenticate(session, alice.key)
    assert authenticator.cached(alice.key) is None  # refusals are not remembered


def test_with_no_ttl_every_request_checks_the_key(session: Session, alice: TenantKey) -> None:
    authenticator = Authenticator(0)
    authenticator.authenticate(session, alice.key)
    assert authenticator.cached(alice.key) is None
    _revoke_all_keys_of(session, alice)
    with pytest.raises(Unauthorized):
        authenticator.authenticate(session, alice.key)


def test_the_memory_is_bounded(session: Session, alice: TenantKey, bob: TenantKey) -> None:
    authenticator = Authenticator(60.0, max_entries=1)
    authenticator.authenticate(session, alice.key)
    authenticator.authenticate(session, bob.key)
    assert authenticator.cached(alice.key) is None  # the least recently used went
    assert authenticator.cached(bob.key) is not None


def test_revocation_takes_effect_within_the_ttl_through_the_api(
    settings: Settings, session_factory: sessionmaker[Session], storage: LocalStorage, session: Session,
    alice: TenantKey,
) -> None:  # fmt: skip
    app = create_app(settings.model_copy(update={"auth_cache_seconds": 0.2}), session_factory=session_factory,
                     storage=storage)  # fmt: skip
    with TestClient(app) as client:
        assert client.get("/v1/corpora", headers=alice.headers).status_code == 200
        _revoke_all_keys_of(session, alice)
        deadline = time.monotonic() + 10
        while client.get("/v1/corpora", headers=alice.headers).status_code == 200:
            assert time.monotonic() < deadline, "a revoked key was still accepted long after the TTL"
            time.sleep(0.05)
        assert_error(client.get("/v1/corpora", headers=alice.headers), 401, "unauthorized")


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
