"""Readiness: can this process reach what it needs to serve requests?

The checks block (a query, a Redis ping), so they run in threads, but never in the request thread pool:
that pool may be busy with slow requests, and a probe that waits behind them makes an orchestrator
restart a process that is working. :class:`ReadinessProbe` has threads of its own and a deadline: a check
that does not answer in time is reported as failed, and a probe never waits longer than that.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from functools import partial

import redis
from sqlalchemy import text
from sqlalchemy.orm import Session

from app.config import Settings

__all__ = ["READINESS_TIMEOUT_SECONDS", "ReadinessProbe", "check_database", "check_redis"]

READINESS_TIMEOUT_SECONDS = 3.0
# Threads of the probe: the checks of two probes at once. A check that hangs holds one; the checks that
# then wait for a thread are given up at the deadline like a hanging one.
PROBE_THREADS = 4


def check_database(session_factory: Callable[[], Session]) -> str:
    """``"ok"`` or ``"error: <exception type>"``; never raises."""
    try:
        with session_factory() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return "ok"


def check_redis(redis_url: str) -> str:
    """``"ok"`` or ``"error: <exception type>"``; never raises."""
    try:
        client = redis.Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=1)
        with client:
            client.ping()
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return "ok"


class ReadinessProbe:
    """The database and Redis checks of one API process, run in its own threads, each given up after
    ``timeout`` seconds."""

    def __init__(
        self,
        session_factory: Callable[[], Session],
        settings: Settings,
        *,
        timeout: float = READINESS_TIMEOUT_SECONDS,
    ) -> None:
        self.checks: dict[str, Callable[[], str]] = {
            "database": partial(check_database, session_factory),
            "redis": partial(check_redis, settings.redis_url),
        }
        self.timeout = timeout
        self._executor = concurrent.futures.ThreadPoolExecutor(PROBE_THREADS, "bertpt-readiness")

    async def check(self) -> dict[str, str]:
        """``{"database": "ok" | "error: ...", "redis": ...}``, within ``timeout``; never raises."""
        futures = {name: self._executor.submit(check) for name, check in self.checks.items()}
        _, late = await asyncio.wait([asyncio.wrap_future(f) for f in futures.values()], timeout=self.timeout)
        for waiting in late:
            waiting.cancel()  # and its check, if it has not started
        return {name: self._outcome(future) for name, future in futures.items()}

    def _outcome(self, future: concurrent.futures.Future[str]) -> str:
        if future.done() and not future.cancelled():
            return future.result()
        return f"error: no answer in {self.timeout:g} s"

    def close(self) -> None:
        """Drop the checks not started; a check still running ends by its own timeouts."""
        self._executor.shutdown(wait=False, cancel_futures=True)
