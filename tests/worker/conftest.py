"""Worker test fixtures: a worker context on the session database of tests/conftest.py, whose rows the
tests commit with the ``factory`` fixture there (the executor opens its own sessions, and the training
process's supervisor must see what a test wrote), the bytes of the small corpus, a corpus with a problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.storage import LocalStorage
from tests.support import REDIS_URL
from worker.context import WorkerContext


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


@pytest.fixture(scope="session")
def tiny_corpus_bytes(small_corpus: Path) -> bytes:
    return small_corpus.read_bytes()


@pytest.fixture(scope="session")
def blank_line_corpus(tmp_path_factory: pytest.TempPathFactory, documents: list[list[str]]) -> Path:
    """A corpus with a blank line after every sentence (a common export mistake): each sentence is a
    document of its own, so no next-sentence pair can be IsNext. It prepares and trains, with warnings."""
    path = tmp_path_factory.mktemp("blank-lines") / "blank-lines.txt"
    path.write_text("".join(f"{sentence}\n\n" for document in documents[:150] for sentence in document))
    return path
