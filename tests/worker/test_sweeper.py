"""The workers' sweep of runs left queued: a failed send is tried again, the thread sweeps until stopped."""

from __future__ import annotations

import logging
import time
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.models import utcnow
from tests.support import TenantKey, make_run
from worker.sweeper import QueuedRunSweeper

TEN_MINUTES = timedelta(minutes=10)


def test_a_failed_send_is_tried_again_at_the_next_sweep(
    session: Session,
    session_factory: sessionmaker[Session],
    alice: TenantKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stale = make_run(session, alice.tenant, created_at=utcnow() - timedelta(hours=1))

    def broker_down(_run_id: str) -> None:
        raise ConnectionError("broker unreachable")

    sweeper = QueuedRunSweeper(session_factory, broker_down, older_than=TEN_MINUTES)
    with caplog.at_level(logging.WARNING, logger="worker.sweeper"):
        assert sweeper.sweep() == []
    assert "sweep of queued runs failed (ConnectionError" in caplog.text
    session.refresh(stale)
    assert stale.sent_at is None  # rolled back with the failed send: still due

    sent: list[str] = []
    sweeper.enqueue = sent.append
    assert sweeper.sweep() == [stale.id] and sent == [stale.id]


def test_the_sweeper_thread_sweeps_until_stopped(session_factory: sessionmaker[Session], session: Session,
                                                 alice: TenantKey) -> None:  # fmt: skip
    stale = make_run(session, alice.tenant, created_at=utcnow() - timedelta(hours=1))
    sent: list[str] = []
    sweeper = QueuedRunSweeper(session_factory, sent.append, older_than=TEN_MINUTES, every_seconds=0.05)
    sweeper.start()
    try:
        for _ in range(200):
            if sent:
                break
            time.sleep(0.05)
    finally:
        sweeper.stop()
    assert sent == [stale.id]
    assert not sweeper._thread.is_alive()
