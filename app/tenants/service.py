"""Tenants, API keys and authentication."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.errors import Conflict, NotFound, Unauthorized, ValidationFailed
from app.ids import API_KEY_PREFIX, hash_api_key, new_api_key, new_id
from app.models import ApiKey, Tenant, utcnow
from app.tenants import repository

__all__ = [
    "IssuedKey",
    "authenticate",
    "create_api_key",
    "create_tenant",
    "get_tenant_by_name",
    "revoke_api_key",
]


@dataclass(frozen=True)
class IssuedKey:
    """A new key: ``key`` is the secret, shown once; ``api_key`` the stored row (hash and prefix)."""

    api_key: ApiKey
    key: str


def create_tenant(session: Session, name: str) -> Tenant:
    name = name.strip()
    if not name or len(name) > 100:
        raise ValidationFailed("name", "a tenant name is 1 to 100 characters")
    if repository.get_tenant_by_name(session, name) is not None:
        raise Conflict(f"a tenant named {name!r} already exists", param="name")
    tenant = Tenant(id=new_id("ten"), name=name)
    try:
        with session.begin_nested():
            repository.add(session, tenant)
    except IntegrityError:  # created concurrently
        raise Conflict(f"a tenant named {name!r} already exists", param="name") from None
    return tenant


def get_tenant_by_name(session: Session, name: str) -> Tenant:
    tenant = repository.get_tenant_by_name(session, name)
    if tenant is None:
        raise NotFound("tenant", name, param="tenant")
    return tenant


def create_api_key(session: Session, tenant: Tenant) -> IssuedKey:
    key = new_api_key()
    api_key = ApiKey(id=new_id("key"), tenant_id=tenant.id, key_hash=hash_api_key(key), prefix=key[:12])
    repository.add(session, api_key)
    return IssuedKey(api_key=api_key, key=key)


def revoke_api_key(session: Session, key_id: str) -> ApiKey:
    api_key = repository.get_api_key(session, key_id)
    if api_key is None:
        raise NotFound("API key", key_id)
    if api_key.revoked_at is None:
        api_key.revoked_at = utcnow()
        session.flush()
    return api_key


def authenticate(session: Session, key: str | None) -> Tenant:
    """The tenant of a presented API key; :class:`Unauthorized` for a missing, unknown or revoked one
    (all alike, so that a caller learns nothing about keys it does not hold)."""
    if not key:
        raise Unauthorized("missing API key: send the header 'Authorization: Bearer <key>'")
    tenant = None
    if key.startswith(API_KEY_PREFIX):
        tenant = repository.get_tenant_by_key_hash(session, hash_api_key(key))
    if tenant is None:
        raise Unauthorized("invalid or revoked API key")
    return tenant
