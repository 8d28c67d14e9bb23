"""The `bertpt admin` commands, run with click's CliRunner against the test database."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from click.testing import CliRunner, Result
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.admin import AdminContext, admin
from app.config import Settings, get_settings
from app.models import ApiKey

RunAdmin = Callable[..., Result]


@pytest.fixture
def run_admin(settings: Settings, session_factory: sessionmaker[Session]) -> RunAdmin:
    runner = CliRunner()

    def run(*args: str) -> Result:
        obj = AdminContext(settings=settings, session_factory=session_factory)
        return runner.invoke(admin, list(args), obj=obj, catch_exceptions=False)

    return run


def test_create_tenant_and_key(run_admin: RunAdmin, client: TestClient) -> None:
    created = run_admin("create-tenant", "acme")
    assert created.exit_code == 0, created.output
    assert created.stdout.strip().startswith("ten_")

    issued = run_admin("create-key", "--tenant", "acme")
    assert issued.exit_code == 0, issued.output
    key = issued.stdout.strip()
    assert key.startswith("bpt_") and "\n" not in key
    assert "not shown again" in issued.stderr

    response = client.get("/v1/corpora", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200


def test_errors_are_one_line(run_admin: RunAdmin) -> None:
    assert run_admin("create-tenant", "acme").exit_code == 0
    again = run_admin("create-tenant", "acme")
    assert again.exit_code == 1 and "already exists" in again.output
    missing = run_admin("create-key", "--tenant", "nobody")
    assert missing.exit_code == 1 and "no tenant" in missing.output


def test_revoke_key(run_admin: RunAdmin, client: TestClient, session: Session) -> None:
    run_admin("create-tenant", "acme")
    key = run_admin("create-key", "--tenant", "acme").stdout.strip()
    key_id = session.scalar(select(ApiKey.id).where(ApiKey.prefix == key[:12]))
    assert run_admin("revoke-key", key_id).exit_code == 0
    assert client.get("/v1/corpora", headers={"Authorization": f"Bearer {key}"}).status_code == 401


def test_migrate_uses_the_settings_url(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test database is already at head: migrating it again is a no-op that succeeds."""
    monkeypatch.setenv("BERTPT_DATABASE_URL", database_url)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(admin, ["migrate"], catch_exceptions=False)
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert "upgraded to head" in result.stderr
