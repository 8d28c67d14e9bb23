"""Service test fixtures: the settings, the app and its client, on the rolled-back session of
tests/conftest.py (every session of the app joins the test's transaction)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.api.main import create_app
from app.config import Settings
from app.storage import LocalStorage
from tests.support import REDIS_URL


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
        housekeeping=False,  # the reaper looks at every tenant's runs: tests/app/test_housekeeping.py
    )


@pytest.fixture
def app(settings: Settings, session_factory: sessionmaker[Session], storage: LocalStorage) -> FastAPI:
    return create_app(settings, session_factory=session_factory, storage=storage)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client
