"""Engine, sessions and the transaction boundary.

Nothing is created at import: the API builds its engine in ``create_app``, the worker and the admin
commands build theirs from the same :class:`~app.config.Settings`.

Services never commit. The boundary does, once: :func:`session_scope` (used by the API's session
dependency, the worker and the admin commands) commits when the block ends without an exception and
rolls back otherwise. Side effects that must only happen once the rows are durable (sending a Celery
task, deleting a stored file) are registered with :func:`on_commit`; cleanups of what a failed
transaction leaves behind (a file already moved into storage) with :func:`on_rollback`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.errors import UntranslatableCharacter
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

__all__ = [
    "alembic_config",
    "create_db_engine",
    "create_session_factory",
    "end_session",
    "is_nul_refused",
    "on_commit",
    "on_rollback",
    "session_scope",
    "upgrade_database",
]

logger = logging.getLogger(__name__)

_ON_COMMIT = "bertpt_on_commit"
_ON_ROLLBACK = "bertpt_on_rollback"


def create_db_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``: pre-pinged pooled connections for PostgreSQL; for SQLite (the local demo)
    the parent directory is created, connections may cross threads, and foreign keys are enforced."""
    if url.startswith("sqlite"):
        database = url.split("///", 1)[1] if "///" in url else ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False}, **kwargs)
        event.listen(engine, "connect", _configure_sqlite)
        return engine
    # Small by default (the worker and the admin commands hold one or two); the API sizes it to its
    # threads (see create_app).
    sizing = {} if "poolclass" in kwargs else {"pool_size": 5, "max_overflow": 10}
    options = {"pool_pre_ping": True, **sizing, **kwargs}
    return create_engine(url, **options)


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    """Foreign keys enforced; WAL journal and a busy timeout so the demo's API, worker and training
    supervisor can share one database file without "database is locked" errors."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def create_session_factory(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: responses are built from the objects after the boundary has committed.
    return sessionmaker(bind=engine, expire_on_commit=False)


def is_nul_refused(exc: BaseException) -> bool:
    """Whether ``exc`` is PostgreSQL refusing a NUL character: in text (psycopg does not send one) or as
    ``\\u0000`` in JSON (the server cannot store it). Only a client's text holds one: the API answers 422."""
    refusal = exc.orig if isinstance(exc, DBAPIError) else exc
    return isinstance(refusal, UntranslatableCharacter) or (
        isinstance(refusal, psycopg.DataError) and "NUL" in str(refusal)
    )


def on_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run ``callback`` after the boundary commits this session (never if it rolls back)."""
    session.info.setdefault(_ON_COMMIT, []).append(callback)


def on_rollback(session: Session, callback: Callable[[], None]) -> None:
    """Run ``callback`` if the boundary rolls this session back instead of committing it."""
    session.info.setdefault(_ON_ROLLBACK, []).append(callback)


@contextmanager
def session_scope(factory: Callable[[], Session]) -> Iterator[Session]:
    """A session whose block is one unit of work: commit at the end, roll back on any exception, then run
    the registered :func:`on_commit` or :func:`on_rollback` callbacks."""
    session = factory()
    try:
        yield session
    except BaseException:
        end_session(session, failed=True)
        raise
    end_session(session, failed=False)


def end_session(session: Session, *, failed: bool) -> None:
    """The end of :func:`session_scope`'s block, for callers that cannot hold a ``with`` across it (the
    API's session dependency opens the session on the event loop and ends it in a worker thread): commit
    (or roll back when ``failed``, or when the commit itself fails, then re-raise), run the callbacks of
    the outcome, close."""
    try:
        if failed:
            session.rollback()
            _run_callbacks(session, _ON_ROLLBACK)
            return
        try:
            session.commit()
        except BaseException:
            session.rollback()
            _run_callbacks(session, _ON_ROLLBACK)
            raise
        _run_callbacks(session, _ON_COMMIT)
    finally:
        session.info.pop(_ON_COMMIT, None)
        session.info.pop(_ON_ROLLBACK, None)
        session.close()


def _run_callbacks(session: Session, name: str) -> None:
    """Each callback runs even when an earlier one fails: the transaction's outcome is already decided,
    so a failing side effect is logged, not raised."""
    for callback in session.info.pop(name, []):
        try:
            callback()
        except Exception:
            logger.exception("%s callback %r failed", name.removeprefix("bertpt_"), callback)


def alembic_config(url: str) -> Any:
    """Alembic's configuration for ``url``: the scripts of the installed ``migrations`` package (a
    checkout's top-level ``migrations/``, carried by the wheel), so any install can migrate. No alembic.ini:
    it serves developers who run ``alembic`` from the repository, and without a file env.py leaves logging
    to the caller."""
    from alembic.config import Config

    import migrations

    config = Config()
    # set_main_option interpolates %(name)s: a literal % in the install path must be doubled.
    script_location = str(Path(migrations.__file__).parent).replace("%", "%%")
    config.set_main_option("script_location", script_location)
    config.attributes["database_url"] = url
    return config


def upgrade_database(url: str, revision: str = "head") -> None:
    """``alembic upgrade <revision>`` against ``url`` (the admin ``migrate`` command, the test fixtures)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)
