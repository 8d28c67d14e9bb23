"""Dependencies of the routes, as typed aliases: ``SessionDep``, ``CurrentTenant``, ``StorageDep``,
``SettingsDep``.

Everything comes from ``request.app.state`` (set by ``create_app``), so that each app (and each test)
has its own settings, database and storage.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import session_scope
from app.models import Tenant
from app.storage import Storage
from app.tenants.service import authenticate

__all__ = ["CurrentTenant", "SessionDep", "SettingsDep", "StorageDep", "get_current_tenant", "get_session"]


def get_settings_from_app(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_storage(request: Request) -> Storage:
    storage: Storage = request.app.state.storage
    return storage


def get_session(request: Request) -> Iterator[Session]:
    """One unit of work per request: committed when the route returns (before the response is sent),
    rolled back if it raises."""
    with session_scope(request.app.state.session_factory) as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings_from_app)]
StorageDep = Annotated[Storage, Depends(get_storage)]
# scope="function": the commit happens when the route function returns, so a client never receives a
# success for a transaction that then fails to commit.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer bpt_...`.")


def get_current_tenant(
    session: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Tenant:
    return authenticate(session, credentials.credentials if credentials else None)


CurrentTenant = Annotated[Tenant, Depends(get_current_tenant)]
