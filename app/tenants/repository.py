"""Queries on tenants and API keys."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import ApiKey, Tenant


def get_tenant_by_name(session: Session, name: str) -> Tenant | None:
    return session.scalars(select(Tenant).where(Tenant.name == name)).one_or_none()


def get_tenant_by_key_hash(session: Session, key_hash: str) -> Tenant | None:
    """The tenant owning the unrevoked key with this hash."""
    statement = (
        select(Tenant)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
    )
    return session.scalars(statement).one_or_none()


def lock_tenant(session: Session, tenant_id: str) -> None:
    """Lock the tenant's row (``FOR UPDATE``) until the transaction ends: what checks a per-tenant limit
    before adding a row takes it first, so two such transactions of one tenant count one after the other."""
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())


def get_api_key(session: Session, key_id: str) -> ApiKey | None:
    return session.get(ApiKey, key_id)


def add(session: Session, obj: Tenant | ApiKey) -> None:
    session.add(obj)
    session.flush()
