"""Service test fixtures: each test in a transaction rolled back at its end (on the session database of
tests/conftest.py), the app with its client, and tenants with API keys."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from app.api.main import create_app
from app.config import Settings
from app.storage import LocalStorage
from app.tenants.service import create_api_key, create_tenant
from tests.support import REDIS_URL, TenantKey


@pytest.fixture
def connection(engine: Engine) -> Iterator[Connection]:
    """One connection in one transaction, rolled back after the test: every session of the test (the
    app's included) joins it with savepoints, so their commits never reach the database."""
    with engine.connect() as connection:
        transaction = connection.begin()
        yield connection
        transaction.rollback()


@pytest.fixture
def session_factory(connection: Connection) -> sessionmaker[Session]:
    return sessionmaker(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)


@pytest.fixture
def session(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    with session_factory() as session:
        yield session


@pytest.fixture
def settings(database_url: str, storage: LocalStorage) -> Settings:
    return Settings(
        env="test",
        database_url=database_url,
        redis_url=REDIS_URL,
        storage_url=f"file://{storage.root}",
        hf_hub_offline=False,
        max_upload_bytes=8 << 20,
        training_queue=f"training-test-{secrets.token_hex(4)}",
    )


@pytest.fixture
def app(settings: Settings, session_factory: sessionmaker[Session], storage: LocalStorage) -> FastAPI:
    return create_app(settings, session_factory=session_factory, storage=storage)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


@pytest.fixture
def make_tenant(session: Session) -> Any:
    """``make_tenant(name=None) -> TenantKey``: a committed tenant with one API key."""

    def make(name: str | None = None) -> TenantKey:
        tenant = create_tenant(session, name or f"tenant-{secrets.token_hex(4)}")
        issued = create_api_key(session, tenant)
        session.commit()
        return TenantKey(tenant=tenant, key=issued.key)

    return make


@pytest.fixture
def alice(make_tenant: Any) -> TenantKey:
    return make_tenant("alice")


@pytest.fixture
def bob(make_tenant: Any) -> TenantKey:
    return make_tenant("bob")
