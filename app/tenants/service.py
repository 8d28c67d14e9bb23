"""Tenants, API keys and authentication."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.errors import Conflict, NotFound, Unauthorized, ValidationFailed
from app.ids import API_KEY_PREFIX, hash_api_key, new_api_key, new_id
from app.models import ApiKey, Tenant, utcnow
from app.tenants import repository

__all__ = [
    "Authenticator",
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


class Authenticator:
    """:func:`authenticate` for the API, remembering the tenant of each key it accepted for ``ttl_seconds``
    (at most ``max_entries`` keys, least recently used evicted), so that a polling client costs no
    database round trip per request. Refusals are never remembered (a new key works at once); the price is
    that a revoked key keeps working for up to ``ttl_seconds`` in each API process (0: check every time).

    The tenants handed out are detached rows shared between requests: read them, never add them to a
    session.
    """

    def __init__(
        self, ttl_seconds: float, *, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        self._clock = clock
        self._accepted: OrderedDict[str, tuple[float, Tenant]] = OrderedDict()
        self._lock = threading.Lock()

    def cached(self, key: str | None) -> Tenant | None:
        """The tenant of ``key`` if it was accepted less than ``ttl_seconds`` ago; no I/O."""
        if not key or self._ttl <= 0:
            return None
        key_hash = hash_api_key(key)
        with self._lock:
            entry = self._accepted.get(key_hash)
            if entry is None:
                return None
            if self._clock() >= entry[0]:
                del self._accepted[key_hash]
                return None
            self._accepted.move_to_end(key_hash)
            return entry[1]

    def authenticate(self, session: Session, key: str | None) -> Tenant:
        """Check ``key`` against the database and remember it if accepted. The tenant is detached from
        ``session`` at once, so that it stays readable whatever becomes of that session (a rollback would
        expire it)."""
        tenant = authenticate(session, key)
        session.expunge(tenant)
        if self._ttl > 0 and key:
            key_hash = hash_api_key(key)
            with self._lock:
                self._accepted[key_hash] = (self._clock() + self._ttl, tenant)
                self._accepted.move_to_end(key_hash)
                while len(self._accepted) > self._max_entries:
                    self._accepted.popitem(last=False)
        return tenant
