"""Worker test fixtures: the session database of tests/conftest.py with rows *committed* (the executor
opens its own sessions, and the training process's supervisor must see what a test wrote), and a worker
context on it. Every row is created under a fresh tenant (tests.support.Factory), so tests sharing the
database never see each other's rows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import create_session_factory
from app.runs.live import stream_key
from app.storage import LocalStorage
from tests.support import REDIS_URL, Factory
from worker.context import WorkerContext


@pytest.fixture
def committed_factory(engine: Engine) -> sessionmaker[Session]:
    return create_session_factory(engine)


@pytest.fixture
def worker_context(
    database_url: str,
    committed_factory: sessionmaker[Session],
    storage: LocalStorage,
    redis_client: redis.Redis,
) -> WorkerContext:
    settings = Settings(
        env="test", database_url=database_url, redis_url=REDIS_URL, storage_url=f"file://{storage.root}"
    )
    return WorkerContext(
        settings=settings,
        session_factory=committed_factory,
        storage=storage,
        redis=redis_client,
        worker_id="test-worker:1",
        poll_interval_seconds=0.2,
        stop_grace_seconds=60,
    )


@pytest.fixture
def factory(
    committed_factory: sessionmaker[Session], storage: LocalStorage, redis_client: redis.Redis
) -> Iterator[Factory]:
    made = Factory(committed_factory, storage, redis_client)
    yield made
    if made.run_ids:
        redis_client.delete(*(stream_key(run_id) for run_id in made.run_ids))


@pytest.fixture(scope="session")
def tiny_corpus_bytes(small_corpus: Path) -> bytes:
    return small_corpus.read_bytes()
