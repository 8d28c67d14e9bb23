"""Housekeeping: the reaper's runs are sent and announced after the commit, a failed chore is tried again
at the next pass, the thread works until stopped, and its period follows the settings."""

from __future__ import annotations

import logging
import time
from datetime import timedelta

import pytest
import redis
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.housekeeping import Housekeeper, housekeeping_period
from app.models import utcnow
from app.runs import live
from app.runs.live import LivePublisher
from app.runs.states import RunStatus
from app.storage import LocalStorage
from tests.support import TenantKey, make_run


def _housekeeper(
    session_factory: sessionmaker[Session], storage: LocalStorage, enqueue, publisher=None, **settings
) -> Housekeeper:
    return Housekeeper(
        Settings(env="test", **{"requeue_after_seconds": 600, "heartbeat_timeout_seconds": 30, **settings}),
        session_factory,
        storage,
        enqueue,
        publisher or LivePublisher(None),
    )


def test_the_period_follows_the_heartbeat_timeout_and_the_requeue_delay() -> None:
    assert housekeeping_period(Settings(heartbeat_timeout_seconds=120, requeue_after_seconds=600)) == 30
    assert housekeeping_period(Settings(heartbeat_timeout_seconds=2, requeue_after_seconds=600)) == 0.5
    assert housekeeping_period(Settings(heartbeat_timeout_seconds=3600, requeue_after_seconds=0)) == 60
    assert housekeeping_period(Settings(heartbeat_timeout_seconds=3600, requeue_after_seconds=5)) == 5


def test_a_failed_send_is_tried_again_at_the_next_pass(
    session: Session,
    session_factory: sessionmaker[Session],
    alice: TenantKey,
    storage: LocalStorage,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stale = make_run(session, alice.tenant, created_at=utcnow() - timedelta(hours=1))

    def broker_down(_run_id: str) -> None:
        raise ConnectionError("broker unreachable")

    housekeeper = _housekeeper(session_factory, storage, broker_down)
    with caplog.at_level(logging.WARNING, logger="app.housekeeping"):
        done = housekeeper.run_once()
    assert "send again the tasks of runs left queued" not in done
    assert "send again the tasks of runs left queued failed (ConnectionError" in caplog.text
    session.refresh(stale)
    assert stale.sent_at is None  # rolled back with the failed send: still due

    sent: list[str] = []
    housekeeper.enqueue = sent.append
    assert stale.id in housekeeper.run_once()["send again the tasks of runs left queued"]
    assert stale.id in sent


def test_a_reaped_run_is_sent_and_announced(
    session: Session,
    session_factory: sessionmaker[Session],
    alice: TenantKey,
    redis_client: redis.Redis,
    storage: LocalStorage,
) -> None:
    lost = make_run(session, alice.tenant, status=RunStatus.RUNNING, attempt=1,
                    heartbeat_at=utcnow() - timedelta(minutes=5))  # fmt: skip
    sent: list[str] = []
    housekeeper = _housekeeper(session_factory, storage, sent.append, LivePublisher(redis_client))
    try:
        assert f"{lost.id} -> queued" in housekeeper.reap()
        assert sent.count(lost.id) == 1
        types = [entry.type for entry in live.read_since(redis_client, lost.id)]
        assert types == ["event", "status"]
        assert live.read_since(redis_client, lost.id)[1].json()["status"] == "queued"
    finally:
        redis_client.delete(live.stream_key(lost.id))


def test_the_thread_works_until_stopped(
    session_factory: sessionmaker[Session], session: Session, alice: TenantKey, storage: LocalStorage
) -> None:
    stale = make_run(session, alice.tenant, created_at=utcnow() - timedelta(hours=1))
    sent: list[str] = []
    housekeeper = _housekeeper(session_factory, storage, sent.append)
    housekeeper.every_seconds = 0.05
    housekeeper.start()
    try:
        for _ in range(200):
            if stale.id in sent:
                break
            time.sleep(0.05)
    finally:
        housekeeper.stop()
    assert stale.id in sent
    assert not housekeeper._thread.is_alive()
