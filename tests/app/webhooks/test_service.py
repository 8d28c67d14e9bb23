"""The webhook service against committed rows: the per-tenant limit holds when two creations race (the
tenant's row is locked before its webhooks are counted)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from sqlalchemy import delete, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.errors import Conflict
from app.models import Tenant
from app.tenants.service import create_tenant
from app.webhooks import repository, service
from app.webhooks.schemas import WebhookCreate

BODY = WebhookCreate(url="https://hooks.example.com/bertpt", events=["run.*"])


@pytest.fixture
def tenant(committed_factory: sessionmaker[Session]) -> Iterator[Tenant]:
    with committed_factory() as session:
        tenant = create_tenant(session, f"webhooks-{secrets.token_hex(4)}")
        session.commit()
    yield tenant
    with committed_factory() as session:
        session.execute(delete(Tenant).where(Tenant.id == tenant.id))  # its webhooks go with it
        session.commit()


def test_two_creations_at_once_do_not_pass_the_limit(
    committed_factory: sessionmaker[Session], tenant: Tenant
) -> None:
    with committed_factory() as first, committed_factory() as second:
        for _ in range(service.MAX_WEBHOOKS_PER_TENANT - 1):
            service.create_webhook(first, tenant, BODY)
        first.commit()
        service.create_webhook(first, tenant, BODY)  # the last one allowed, not committed yet

        # The second request waits for the first's transaction (here: gives up after 100 ms; LOCAL: this
        # transaction only, the pooled connection keeps its default)
        # instead of counting the webhooks committed so far, one short of the limit.
        second.execute(text("SET LOCAL lock_timeout = '100ms'"))
        with pytest.raises(OperationalError, match="lock timeout"):
            service.create_webhook(second, tenant, BODY)
        second.rollback()

        first.commit()
        with pytest.raises(Conflict):
            service.create_webhook(second, tenant, BODY)
        second.rollback()
        assert repository.count_for_tenant(second, tenant.id) == service.MAX_WEBHOOKS_PER_TENANT
