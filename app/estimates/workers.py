"""Which workers are alive, and which training queues they serve: the main process of each worker that
consumes a training queue (``TRAINING_QUEUE.<class>``: ``training.cpu``, ``training.gpu``) announces
itself in Redis, a key per (queue, worker) with its pool's concurrency as its training slots, the devices
it is pinned to (``bertpt worker --gpus``), and an expiry a few housekeeping periods long; a worker of
other queues only (``bertpt worker --queues analysis``) announces nothing. A worker that dies stops
renewing its keys, which expire.

Read by the queue part of estimates (the slots, :mod:`app.estimates.service`) and by the runs that wait
for a worker (whether any serves their queue, :mod:`app.runs.routing`). Without announcements (housekeeping
off, Redis unreachable) estimates assume one slot and no run is said to wait for want of a worker.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass

import redis

from app.config import Settings

__all__ = ["Announcement", "WorkerRegistry", "announce_worker", "worker_key"]

logger = logging.getLogger(__name__)

_PREFIX = "bertpt:workers"
# Expiry of an announcement, in housekeeping periods: two missed renewals are tolerated.
_PERIODS_ALIVE = 3


def worker_key(queue: str, worker: str) -> str:
    """``bertpt:workers:<training queue>:<worker>``: the announcement of ``worker`` for ``queue``."""
    return f"{_PREFIX}:{queue}:{worker}"


@dataclass(frozen=True)
class Announcement:
    """One live worker of a training queue."""

    worker: str  # <host>:<pid> of its main process
    slots: int  # trainings it runs at once
    devices: int | None  # GPUs it is pinned to (CUDA_VISIBLE_DEVICES); None: not pinned


def announce_worker(
    client: redis.Redis,
    settings: Settings,
    worker: str,
    *,
    slots: int,
    queues: Collection[str],
    period_seconds: float,
    devices: int | None = None,
) -> bool:
    """Say that ``worker`` (``<host>:<pid>`` of its main process), whose pool runs ``slots`` tasks at once,
    pinned to ``devices`` GPUs (None: not pinned), serves those of ``queues`` that are training queues, for
    ``3 x period_seconds``; called every housekeeping period. False (nothing said) for a worker of no
    training queue."""
    training = [queue for queue in settings.training_queues() if queue in queues]
    if not training:
        return False
    ttl = max(1, round(_PERIODS_ALIVE * period_seconds))
    value = json.dumps({"slots": max(1, slots), "devices": devices})
    pipeline = client.pipeline(transaction=False)
    for queue in training:
        pipeline.set(worker_key(queue, worker), value, ex=ttl)
    pipeline.execute()
    return True


def _parse(worker: str, value: bytes | str) -> Announcement | None:
    """An announcement's value: JSON ``{"slots", "devices"}``, or the bare slot count of earlier workers."""
    try:
        parsed = json.loads(value)
    except ValueError:
        return None
    if isinstance(parsed, int) and not isinstance(parsed, bool):
        return Announcement(worker, max(1, parsed), None)
    if not isinstance(parsed, dict) or not isinstance(parsed.get("slots"), int):
        return None
    devices = parsed.get("devices")
    return Announcement(worker, max(1, parsed["slots"]), devices if isinstance(devices, int) else None)


class WorkerRegistry:
    """The live workers of ``settings``' training queues, read at most every ``max_age_seconds`` (a scan
    of a few keys). It also holds, for as long, the figures of the last queue model this process built
    (``queue_figures``: (``time.monotonic()`` then, figures), kept by :func:`app.estimates.service.run_etas`),
    so that reads of runs do not model the queue at every call."""

    def __init__(self, client: redis.Redis, settings: Settings, *, max_age_seconds: float = 5.0) -> None:
        self.client = client
        self.queues = settings.training_queues()
        self._match = f"{_PREFIX}:{settings.training_queue}.*"
        self.max_age_seconds = max_age_seconds
        self._read_at = -float("inf")
        self._announced: dict[str, list[Announcement]] | None = None
        self.queue_figures: tuple[float, object] | None = None

    def announcements(self) -> dict[str, list[Announcement]] | None:
        """The live workers of each training queue (a queue none serves: an empty list); None when Redis
        cannot be read."""
        now = time.monotonic()
        if now - self._read_at < self.max_age_seconds:
            return self._announced
        announced: dict[str, list[Announcement]] | None
        try:
            keys = [
                key.decode() if isinstance(key, bytes) else str(key)
                for key in self.client.scan_iter(match=self._match, count=100)
            ]
            values = self.client.mget(keys) if keys else []
        except redis.RedisError as exc:
            logger.warning("cannot read the workers' announcements (%s)", exc)
            announced = None
        else:
            announced = {queue: [] for queue in self.queues}
            for key, value in zip(keys, values, strict=True):
                for queue in self.queues:
                    prefix = f"{worker_key(queue, '')}"
                    if value is not None and key.startswith(prefix):
                        announcement = _parse(key.removeprefix(prefix), value)
                        if announcement is not None:
                            announced[queue].append(announcement)
        self._announced = announced
        self._read_at = now
        return announced

    def serving(self, queue: str) -> list[Announcement] | None:
        """The live workers of ``queue``; None when that is not known (Redis cannot be read)."""
        announced = self.announcements()
        return None if announced is None else announced.get(queue, [])

    def training_slots(self) -> int | None:
        """Slots of the workers alive now (each worker's concurrency, summed over the workers, whatever
        training queues they serve); None when none announced itself or Redis cannot be reached."""
        announced = self.announcements()
        workers = {a.worker: a.slots for serving in (announced or {}).values() for a in serving}
        return sum(workers.values()) or None
