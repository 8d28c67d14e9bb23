"""Operator commands, registered as ``bertpt admin``: tenants, API keys, database migrations.

    bertpt admin migrate
    bertpt admin create-tenant acme
    bertpt admin create-key --tenant acme      # prints the key once; only its hash is stored
    bertpt admin revoke-key key_...

They use the database of ``BERTPT_DATABASE_URL``. (Tests pass an ``AdminContext`` with their own
session factory as click's ``obj``.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import click
from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.db import create_db_engine, create_session_factory, session_scope, upgrade_database
from app.errors import AppError
from app.tenants import service

__all__ = ["AdminContext", "admin"]


@dataclass
class AdminContext:
    settings: Settings | None = None
    session_factory: Callable[[], Session] | None = None

    def get_settings(self) -> Settings:
        if self.settings is None:
            self.settings = get_settings()
        return self.settings

    def get_session_factory(self) -> Callable[[], Session]:
        if self.session_factory is None:
            self.session_factory = create_session_factory(create_db_engine(self.get_settings().database_url))
        return self.session_factory


@click.group("admin")
@click.pass_context
def admin(ctx: click.Context) -> None:
    """Manage tenants, API keys and the database."""
    ctx.ensure_object(AdminContext)


@admin.command("migrate")
@click.option("--revision", default="head", show_default=True, help="Alembic revision to upgrade to.")
@click.pass_obj
def migrate(obj: AdminContext, revision: str) -> None:
    """Create or upgrade the database schema (alembic upgrade)."""
    upgrade_database(obj.get_settings().database_url, revision)
    click.echo(f"database upgraded to {revision}", err=True)


@admin.command("create-tenant")
@click.argument("name")
@click.pass_obj
def create_tenant(obj: AdminContext, name: str) -> None:
    """Create the tenant NAME; prints its id."""
    with _reporting_errors(), session_scope(obj.get_session_factory()) as session:
        tenant = service.create_tenant(session, name)
        click.echo(tenant.id)


@admin.command("create-key")
@click.option("--tenant", "tenant_name", required=True, help="Name of the tenant the key acts for.")
@click.pass_obj
def create_key(obj: AdminContext, tenant_name: str) -> None:
    """Create an API key; prints it (the only time it can be seen) on stdout."""
    with _reporting_errors(), session_scope(obj.get_session_factory()) as session:
        tenant = service.get_tenant_by_name(session, tenant_name)
        issued = service.create_api_key(session, tenant)
    click.echo(issued.key)
    click.echo(
        f"API key {issued.api_key.id} ({issued.api_key.prefix}...) for tenant {tenant.name}: store it now, "
        "it is not shown again",
        err=True,
    )


@admin.command("revoke-key")
@click.argument("key_id")
@click.pass_obj
def revoke_key(obj: AdminContext, key_id: str) -> None:
    """Revoke the API key KEY_ID (key_...)."""
    with _reporting_errors(), session_scope(obj.get_session_factory()) as session:
        service.revoke_api_key(session, key_id)
    click.echo(f"revoked {key_id}", err=True)


@contextmanager
def _reporting_errors() -> Iterator[None]:
    """Turn domain errors into a one-line message and exit status 1."""
    try:
        yield
    except AppError as exc:
        raise click.ClickException(exc.message) from None
