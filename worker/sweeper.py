"""The sweep of runs left queued: a thread in each worker's main process that, every minute, sends again
the task of runs still queued ``REQUEUE_AFTER_SECONDS`` after their last send
(:func:`app.runs.lifecycle.resend_stale_queued`), so that a run whose message never reached the broker, or
was lost there, still runs.

It has its own database engine without a pool (nothing kept open across the pool's forks) and its own
Celery client.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta
from functools import partial

from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from app.config import Settings
from app.db import create_db_engine, create_session_factory, session_scope
from app.queue import RunEnqueuer, create_celery, enqueue_run
from app.runs import lifecycle

__all__ = ["QueuedRunSweeper", "start_sweeper"]

logger = logging.getLogger(__name__)

SWEEP_EVERY_SECONDS = 60.0


class QueuedRunSweeper:
    def __init__(
        self,
        session_factory: Callable[[], Session],
        enqueue: RunEnqueuer,
        *,
        older_than: timedelta,
        every_seconds: float = SWEEP_EVERY_SECONDS,
    ) -> None:
        self.session_factory = session_factory
        self.enqueue = enqueue
        self.older_than = older_than
        self.every_seconds = every_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bertpt-queued-run-sweeper", daemon=True)

    def sweep(self) -> list[str]:
        """One sweep; a failure (database or broker unreachable) is logged and tried again next time."""
        try:
            with session_scope(self.session_factory) as session:
                sent = lifecycle.resend_stale_queued(
                    session, older_than=self.older_than, enqueue=self.enqueue
                )
        except Exception as exc:
            logger.warning("sweep of queued runs failed (%s: %s); next time again", type(exc).__name__, exc)
            return []
        if sent:
            logger.warning(
                "sent the task of %d run(s) again, still queued %s after their last send: %s",
                len(sent), self.older_than, ", ".join(sent),
            )  # fmt: skip
        return sent

    def _loop(self) -> None:
        while not self._stop.wait(self.every_seconds):
            self.sweep()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)


def start_sweeper(settings: Settings) -> QueuedRunSweeper | None:
    """Start the sweep for a worker configured by ``settings`` (None when REQUEUE_AFTER_SECONDS is 0)."""
    if settings.requeue_after_seconds <= 0:
        return None
    engine = create_db_engine(settings.database_url, poolclass=NullPool)
    enqueue = partial(enqueue_run, celery=create_celery(settings))
    older_than = timedelta(seconds=settings.requeue_after_seconds)
    sweeper = QueuedRunSweeper(
        create_session_factory(engine),
        enqueue,
        older_than=older_than,
        every_seconds=min(SWEEP_EVERY_SECONDS, settings.requeue_after_seconds),
    )
    sweeper.start()
    return sweeper
