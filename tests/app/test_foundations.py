"""Settings, storage, the transaction boundary and the migrations."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from pydantic import ValidationError
from sqlalchemy import Engine, inspect, select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings, get_settings
from app.db import (
    create_db_engine,
    create_session_factory,
    on_commit,
    on_rollback,
    session_scope,
    upgrade_database,
)
from app.ids import hash_api_key, new_api_key, new_id
from app.models import Base, Tenant
from app.pagination import decode_cursor, encode_cursor
from app.storage import LocalStorage, StorageKeyError, validate_key

# -- settings -------------------------------------------------------------------------------------------


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BERTPT_MAX_UPLOAD_BYTES", "1234")
    monkeypatch.setenv("BERTPT_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = Settings()
    assert settings.max_upload_bytes == 1234
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.hf_hub_offline is True
    assert settings.training_queue == "training"


def test_get_settings_is_cached() -> None:
    get_settings.cache_clear()
    try:
        assert get_settings() is get_settings()
    finally:
        get_settings.cache_clear()


def test_production_refuses_unsafe_defaults() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(env="prod")
    assert "SQLite" in str(info.value) and "CORS" in str(info.value)
    Settings(env="prod", database_url="postgresql+psycopg://db/bertpt", cors_origins=["https://ui.example"])
    with pytest.raises(ValidationError, match="file://"):
        Settings(storage_url="s3://bucket")


# -- ids ------------------------------------------------------------------------------------------------


def test_ids_and_keys() -> None:
    assert new_id("corp").startswith("corp_") and len(new_id("corp")) == 29
    key = new_api_key()
    assert key.startswith("bpt_") and len(key) == 47
    assert hash_api_key(key) == hash_api_key(key) and len(hash_api_key(key)) == 64


def test_cursor_round_trip() -> None:
    when = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
    assert decode_cursor(encode_cursor(when, "corp_x")) == (when, "corp_x")


# -- storage --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["", "/abs", "../up", "a/../b", "a//b", "./a", "a\\b", ".tmp/x", "a/.hidden", "a\x00"]
)
def test_unsafe_keys_are_refused(key: str) -> None:
    with pytest.raises(StorageKeyError):
        validate_key(key)


def test_local_storage_writes_are_atomic(tmp_path: Path) -> None:
    storage = LocalStorage.from_url(f"file://{tmp_path}/root")
    with storage.open_write("corpora/c1/corpus.txt") as pending:
        pending.write(b"hello ")
        pending.write(b"world")
        assert not storage.exists("corpora/c1/corpus.txt")
        pending.commit()
    assert pending.bytes_written == 11
    with storage.open_read("corpora/c1/corpus.txt") as stream:
        assert stream.read() == b"hello world"
    assert storage.size("corpora/c1/corpus.txt") == 11

    with storage.open_write("corpora/c2/corpus.txt") as pending:
        pending.write(b"never committed")
    assert not storage.exists("corpora/c2/corpus.txt")
    assert storage.temporary_entries() == []

    with pytest.raises(RuntimeError), storage.open_write("corpora/c3/corpus.txt") as pending:
        pending.write(b"partial")
        raise RuntimeError("upload failed")
    assert storage.temporary_entries() == []

    storage.delete("corpora/c1/corpus.txt")
    assert not (storage.root / "corpora").exists()  # empty parents are pruned
    storage.delete("corpora/never/existed.txt")


def test_local_storage_trees(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    with storage.open_tree("checkpoints/k1") as tree:
        (tree.path / "config.json").write_text("{}")
        (tree.path / "model.safetensors").write_bytes(b"12345")
        tree.commit()
    assert storage.size("checkpoints/k1") == 7
    assert storage.local_path("checkpoints/k1").is_dir()
    with storage.open_tree("checkpoints/k1") as tree, pytest.raises(FileExistsError):
        tree.commit()
    with storage.scratch_dir() as scratch:
        (scratch / "f").write_bytes(b"x")
    assert storage.temporary_entries() == []
    storage.delete("checkpoints/k1")
    assert not storage.exists("checkpoints/k1")


def test_local_storage_refuses_symlinks_out_of_the_root(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "root")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "escape").symlink_to(tmp_path)
    with pytest.raises(StorageKeyError):
        storage.local_path("escape/file")


# -- transaction boundary -------------------------------------------------------------------------------


def test_session_scope_commits_then_runs_callbacks(session_factory: sessionmaker[Session]) -> None:
    events: list[str] = []
    with session_scope(session_factory) as session:
        session.add(Tenant(id=new_id("ten"), name="scoped"))
        on_commit(session, lambda: events.append("committed"))
        on_rollback(session, lambda: events.append("rolled back"))
    assert events == ["committed"]


def test_session_scope_rolls_back_on_error(
    session_factory: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    events: list[str] = []

    def failing() -> None:
        raise OSError("disk gone")

    with pytest.raises(ValueError), session_scope(session_factory) as session:
        session.add(Tenant(id=new_id("ten"), name="never"))
        on_commit(session, lambda: events.append("committed"))
        on_rollback(session, failing)
        on_rollback(session, lambda: events.append("rolled back"))
        raise ValueError("boom")
    assert events == ["rolled back"]  # a failing callback neither hides the error nor stops the others
    assert "rollback callback" in caplog.text
    with session_factory() as check:
        assert check.scalars(select(Tenant).where(Tenant.name == "never")).first() is None


def test_sqlite_works_for_the_demo(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/var/demo.db"
    upgrade_database(url)
    engine = create_db_engine(url)
    try:
        with session_scope(create_session_factory(engine)) as session:
            session.add(Tenant(id="ten_1", name="demo"))
        with create_session_factory(engine)() as session:
            tenant = session.get(Tenant, "ten_1")
            assert tenant is not None and tenant.created_at.tzinfo is not None
    finally:
        engine.dispose()


# -- migrations -----------------------------------------------------------------------------------------


def test_migrations_match_the_models(engine: Engine) -> None:
    """`alembic upgrade head` (run by the database fixture) builds exactly what the models declare."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        tables = set(inspect(connection).get_table_names())
    assert tables >= {
        "tenants",
        "api_keys",
        "corpora",
        "checkpoints",
        "runs",
        "run_metrics",
        "run_events",
        "run_checkpoints",
    }
