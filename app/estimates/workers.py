"""Which workers are alive, for the queue part of estimates: each worker's main process announces itself in
Redis (a key per worker under its training queue, with its number of training slots and an expiry a few
housekeeping periods long), and the API counts the keys. A worker that dies stops renewing its key, which
expires. Nothing else depends on it: without announcements (housekeeping off, Redis unreachable) estimates
assume one slot.
"""

from __future__ import annotations

import logging
import time

import redis

from app.config import Settings

__all__ = ["WorkerRegistry", "announce_worker", "worker_key"]

logger = logging.getLogger(__name__)

_PREFIX = "bertpt:workers"
# Expiry of an announcement, in housekeeping periods: two missed renewals are tolerated.
_PERIODS_ALIVE = 3


def worker_key(queue: str, worker: str) -> str:
    """``bertpt:workers:<training queue>:<worker>``: the announcement of ``worker``."""
    return f"{_PREFIX}:{queue}:{worker}"


def announce_worker(client: redis.Redis, settings: Settings, worker: str, *, period_seconds: float) -> None:
    """Say that ``worker`` (``<host>:<pid>`` of its main process) is alive with ``WORKER_CONCURRENCY``
    training slots, for ``3 x period_seconds``; called every housekeeping period."""
    ttl = max(1, round(_PERIODS_ALIVE * period_seconds))
    client.set(worker_key(settings.training_queue, worker), settings.worker_concurrency, ex=ttl)


class WorkerRegistry:
    """The training slots the live workers of ``settings``' training queue announced, read at most every
    ``max_age_seconds`` (a scan of a few keys)."""

    def __init__(self, client: redis.Redis, settings: Settings, *, max_age_seconds: float = 5.0) -> None:
        self.client = client
        self.queue = settings.training_queue
        self.max_age_seconds = max_age_seconds
        self._read_at = -float("inf")
        self._slots: int | None = None

    def training_slots(self) -> int | None:
        """Slots of the workers alive now (each worker's concurrency, summed); None when none announced
        itself or Redis cannot be reached."""
        now = time.monotonic()
        if now - self._read_at < self.max_age_seconds:
            return self._slots
        try:
            keys = list(self.client.scan_iter(match=worker_key(self.queue, "*"), count=100))
            values = self.client.mget(keys) if keys else []
        except redis.RedisError as exc:
            logger.warning("cannot read the workers' announcements (%s)", exc)
            values = []
        slots = sum(int(value) for value in values if value is not None and str(value).isdigit())
        self._slots = slots or None
        self._read_at = now
        return self._slots
