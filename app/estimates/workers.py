"""Which workers are alive, for the queue part of estimates: the main process of each worker that consumes
the training queue announces itself in Redis (a key per worker under that queue, with its pool's
concurrency as its training slots and an expiry a few housekeeping periods long), and the API counts the
keys; a worker of other queues only (``bertpt worker --queue analysis``) announces nothing. A worker that
dies stops renewing its key, which expires. Nothing else depends on it: without announcements
(housekeeping off, Redis unreachable) estimates assume one slot.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection

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


def announce_worker(
    client: redis.Redis,
    settings: Settings,
    worker: str,
    *,
    slots: int,
    queues: Collection[str],
    period_seconds: float,
) -> bool:
    """Say that ``worker`` (``<host>:<pid>`` of its main process), whose pool runs ``slots`` tasks at once
    and consumes ``queues``, is alive for ``3 x period_seconds``; called every housekeeping period. Only a
    worker consuming the training queue has training slots: False (nothing said) for any other."""
    if settings.training_queue not in queues:
        return False
    ttl = max(1, round(_PERIODS_ALIVE * period_seconds))
    client.set(worker_key(settings.training_queue, worker), max(1, slots), ex=ttl)
    return True


class WorkerRegistry:
    """The training slots the live workers of ``settings``' training queue announced, read at most every
    ``max_age_seconds`` (a scan of a few keys). It also holds, for as long, the figures of the last queue
    model this process built (``queue_figures``: (``time.monotonic()`` then, figures), kept by
    :func:`app.estimates.service.run_etas`), so that reads of runs do not model the queue at every call."""

    def __init__(self, client: redis.Redis, settings: Settings, *, max_age_seconds: float = 5.0) -> None:
        self.client = client
        self.queue = settings.training_queue
        self.max_age_seconds = max_age_seconds
        self._read_at = -float("inf")
        self._slots: int | None = None
        self.queue_figures: tuple[float, object] | None = None

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
