"""API keys: refused when bad or revoked, stored as hashes, and remembered by the API for a TTL."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.api.main import create_app
from app.config import Settings
from app.errors import Unauthorized
from app.models import ApiKey
from app.storage import LocalStorage
from app.tenants.service import Authenticator, create_api_key, revoke_api_key
from tests.support import TenantKey, assert_error


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
