"""Worker test fixtures: the service tests' migrated PostgreSQL database, but with rows *committed* (the
executor opens its own sessions, and the training process's supervisor must see what a test wrote), a
storage directory per test, and factories for tenants, corpora, base checkpoints and runs.

Every row is created under a fresh tenant, so tests sharing the database never see each other's rows.
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import create_session_factory, session_scope
from app.ids import new_id
from app.models import Checkpoint, Corpus, Run, Tenant
from app.runs.live import create_redis, stream_key
from app.runs.states import RunStatus
from app.storage import LocalStorage
from tests.app.conftest import REDIS_URL, database_url, engine, tiny_pretraining_checkpoint  # noqa: F401
from worker.context import WorkerContext
from worker.pretraining.model_files import inspect_model_dir

# A run of a few steps of the tiny BERT: seconds on a CPU.
TINY_HYPERPARAMETERS: dict[str, Any] = {
    "max_steps": 6,
    "batch_size": 8,
    "max_seq_length": 64,
    "max_predictions_per_seq": 10,
    "learning_rate": 1e-3,
    "logging_every_steps": 1,
    "eval_every_steps": 0,
    "checkpoint_every_steps": 0,
    "eval_documents": 6,
    "seed": 3,
}


@pytest.fixture
def committed_factory(engine: Engine) -> sessionmaker[Session]:  # noqa: F811 - the imported fixture
    return create_session_factory(engine)


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "storage")


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = create_redis(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"the worker tests need Redis at {REDIS_URL} (`make services`): {exc}")
    yield client
    client.close()


@pytest.fixture
def worker_context(
    database_url: str,  # noqa: F811
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


class Factory:
    """Committed rows for one test, all under one new tenant."""

    def __init__(
        self, session_factory: Callable[[], Session], storage: LocalStorage, redis_client: redis.Redis
    ):
        self.session_factory = session_factory
        self.storage = storage
        self.redis = redis_client
        self.run_ids: list[str] = []
        with session_scope(session_factory) as session:
            tenant = Tenant(id=new_id("ten"), name=f"worker-test-{secrets.token_hex(6)}")
            session.add(tenant)
        self.tenant_id = tenant.id

    def corpus(self, content: bytes) -> str:
        corpus_id = new_id("corp")
        key = f"corpora/{corpus_id}/corpus.txt"
        with self.storage.open_write(key) as pending:
            pending.write(content)
            pending.commit()
        with session_scope(self.session_factory) as session:
            session.add(
                Corpus(
                    id=corpus_id,
                    tenant_id=self.tenant_id,
                    name="corpus",
                    filename="corpus.txt",
                    storage_key=key,
                    bytes=len(content),
                    sha256=hashlib.sha256(content).hexdigest(),
                    documents=0,
                    sentences=0,
                    stats={},
                    warnings=[],
                )
            )
        return corpus_id

    def checkpoint(self, directory: Path) -> str:
        """An uploaded checkpoint (``checkpoint:<id>``) holding the files of ``directory``."""
        checkpoint_id = new_id("ckpt")
        key = f"checkpoints/{checkpoint_id}"
        with self.storage.open_tree(key) as tree:
            for file in directory.iterdir():
                shutil.copy(file, tree.path / file.name)
            summary = inspect_model_dir(tree.path)
            tree.commit()
        with session_scope(self.session_factory) as session:
            session.add(
                Checkpoint(
                    id=checkpoint_id,
                    tenant_id=self.tenant_id,
                    name="tiny",
                    storage_key=key,
                    config=summary.config_summary,
                    has_pretraining_heads=summary.has_pretraining_heads,
                    parameters=summary.parameters,
                    bytes=self.storage.size(key),
                    sha256="0" * 64,
                )
            )
        return checkpoint_id

    def run(self, *, corpus_id: str, base_model: str, **values: Any) -> str:
        run_id = new_id("run")
        with session_scope(self.session_factory) as session:
            session.add(
                Run(
                    id=run_id,
                    tenant_id=self.tenant_id,
                    name="a run",
                    base_model=base_model,
                    corpus_id=corpus_id,
                    status=values.pop("status", RunStatus.QUEUED),
                    hyperparameters=values.pop("hyperparameters", TINY_HYPERPARAMETERS),
                    **values,
                )
            )
        self.run_ids.append(run_id)
        return run_id

    def get_run(self, run_id: str) -> Run:
        with self.session_factory() as session:
            run = session.get(Run, run_id)
            assert run is not None
            return run


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
