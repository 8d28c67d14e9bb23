"""Service test fixtures: a fresh PostgreSQL database migrated with Alembic once per session, each test in
a transaction rolled back at its end, a storage directory per test, and small factories.

PostgreSQL is expected at 127.0.0.1:5432 (``make services`` starts it); override the server with
``BERTPT_TEST_POSTGRES_URL`` (a URL of its maintenance database, e.g. ``.../postgres``).
"""

from __future__ import annotations

import gzip
import io
import os
import secrets
import shutil
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Connection, Engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from app.api.main import create_app
from app.config import Settings
from app.db import create_db_engine, upgrade_database
from app.models import Run, Tenant
from app.runs.states import RunStatus
from app.storage import LocalStorage
from app.tenants.service import create_api_key, create_tenant

POSTGRES_URL = os.environ.get(
    "BERTPT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("BERTPT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


# -- database -------------------------------------------------------------------------------------------


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


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A new database, migrated to head by Alembic (so the migrations are tested), dropped at the end."""
    name = f"bertpt_test_{secrets.token_hex(6)}"
    with _admin_connection() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade_database(url)
        yield url
    finally:
        with _admin_connection() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_db_engine(database_url)
    yield engine
    engine.dispose()


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


# -- app ------------------------------------------------------------------------------------------------


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "storage")


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


# -- factories ------------------------------------------------------------------------------------------


@dataclass
class TenantKey:
    tenant: Tenant
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


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


def corpus_bytes(documents: int = 3, sentences: int = 3, *, tag: str = "") -> bytes:
    """A valid corpus: ``documents`` documents of ``sentences`` distinct sentences each."""
    docs = [
        "\n".join(f"Document {d}{tag} says thing number {s} about enzymes." for s in range(sentences))
        for d in range(documents)
    ]
    return ("\n\n".join(docs) + "\n").encode()


def upload_corpus(
    client: TestClient, who: TenantKey, content: bytes, filename: str = "corpus.txt", name: str | None = None
) -> Any:
    data = {"name": name} if name is not None else None
    return client.post("/v1/corpora", files={"file": (filename, content)}, data=data, headers=who.headers)


def make_run(session: Session, tenant: Tenant, **values: Any) -> Run:
    """A run row inserted directly (the run routes are not needed to test what depends on runs)."""
    run = Run(
        id=values.pop("id", f"run_{secrets.token_urlsafe(18)}"),
        tenant_id=tenant.id,
        name=values.pop("name", "a run"),
        status=values.pop("status", RunStatus.QUEUED),
        base_model=values.pop("base_model", "minilm-l6-h384-uncased"),
        hyperparameters=values.pop("hyperparameters", {}),
        **values,
    )
    session.add(run)
    session.commit()
    return run


# -- checkpoints ----------------------------------------------------------------------------------------


TINY_BERT: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}


def _save_tiny(directory: Path, tokenizer_dir: Path, *, heads: bool) -> tuple[Path, int]:
    import torch
    from transformers import BertConfig, BertForPreTraining, BertModel

    vocab_size = len((tokenizer_dir / "vocab.txt").read_text(encoding="utf-8").splitlines())
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab_size, **TINY_BERT)
    model = BertForPreTraining(config) if heads else BertModel(config)
    model.save_pretrained(directory)
    for file in tokenizer_dir.iterdir():
        if file.is_file():
            shutil.copy(file, directory / file.name)
    return directory, sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="session")
def tiny_pretraining_checkpoint(
    tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path
) -> tuple[Path, int]:
    """A BertForPreTraining (both heads) save_pretrained directory and its parameter count."""
    return _save_tiny(tmp_path_factory.mktemp("tiny-pretraining"), tokenizer_dir, heads=True)


@pytest.fixture(scope="session")
def tiny_encoder_checkpoint(
    tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path
) -> tuple[Path, int]:
    """A bare BertModel (no heads) save_pretrained directory and its parameter count."""
    return _save_tiny(tmp_path_factory.mktemp("tiny-encoder"), tokenizer_dir, heads=False)


def tar_gz(files: dict[str, bytes], *, extra: list[tarfile.TarInfo] | None = None) -> bytes:
    """A .tar.gz of ``files`` (member name -> content), plus raw ``extra`` members (links...)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for info in extra or []:
            tar.addfile(info)
    return buffer.getvalue()


def zip_bytes(files: dict[str, bytes], *, symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, content in files.items():
            zf.writestr(name, content)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16) | 0x20
            zf.writestr(info, target)
    return buffer.getvalue()


def directory_files(directory: Path, *, folder: str | None = None) -> dict[str, bytes]:
    """The files of a directory as archive members, at the top level or under ``folder/``."""
    prefix = f"{folder}/" if folder else ""
    return {prefix + path.name: path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file()}


def gzip_bytes(content: bytes) -> bytes:
    return gzip.compress(content, mtime=0)


def safetensors_bytes(shapes: dict[str, tuple[int, ...]], *, dtype: str = "F32") -> bytes:
    """A well-formed safetensors file of zero tensors with these names and shapes (no torch needed)."""
    import json
    import math
    import struct

    header: dict[str, Any] = {}
    offset = 0
    for name, shape in shapes.items():
        size = math.prod(shape) * 4
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(offset)


def fake_bert_files(
    *, vocab_size: int = 10, heads: bool = True, model_type: str = "bert"
) -> dict[str, bytes]:
    """The files of a minimal BERT checkpoint directory with made-up weights."""
    import json

    prefix = "bert." if heads else ""
    shapes: dict[str, tuple[int, ...]] = {
        f"{prefix}embeddings.word_embeddings.weight": (vocab_size, 4),
        f"{prefix}encoder.layer.0.attention.self.query.weight": (4, 4),
    }
    if heads:
        shapes |= {
            "cls.predictions.transform.dense.weight": (4, 4),
            "cls.predictions.bias": (vocab_size,),
            "cls.seq_relationship.weight": (2, 4),
        }
    config = {
        "model_type": model_type,
        "vocab_size": vocab_size,
        "hidden_size": 4,
        "num_hidden_layers": 1,
        "num_attention_heads": 1,
        "max_position_embeddings": 16,
        "architectures": ["BertForPreTraining"],
    }
    vocab = "\n".join(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(vocab_size - 5)]
    )
    return {
        "config.json": json.dumps(config).encode(),
        "model.safetensors": safetensors_bytes(shapes),
        "vocab.txt": vocab.encode(),
        "tokenizer_config.json": b'{"do_lower_case": true}',
    }
