"""The transaction boundary (session_scope and its callbacks), what PostgreSQL refuses to store, and SQLite
for the local demo."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session, sessionmaker

from app.db import (
    create_db_engine,
    create_session_factory,
    is_nul_refused,
    on_commit,
    on_rollback,
    session_scope,
    upgrade_database,
)
from app.ids import new_id
from app.models import Tenant


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


def test_a_nul_character_is_told_apart_from_other_data_errors(session: Session) -> None:
    """PostgreSQL stores no NUL in text (psycopg will not even send it) nor in JSON; the API refuses the
    request that holds one (422). Other data errors stay the server's."""
    with pytest.raises(DataError) as in_text, session.begin_nested():
        session.add(Tenant(id=new_id("ten"), name="a\x00b"))
        session.flush()
    assert is_nul_refused(in_text.value)
    with pytest.raises(DataError) as in_json, session.begin_nested():
        session.execute(text("SELECT CAST(:document AS jsonb)"), {"document": '{"k": "a\\u0000b"}'})
    assert is_nul_refused(in_json.value)
    with pytest.raises(DataError) as overflow, session.begin_nested():
        session.execute(text("SELECT CAST(:number AS integer)"), {"number": 2**40})
    assert not is_nul_refused(overflow.value)


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
