"""The workers' announcements in Redis: which training queues they serve, their slots and devices."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis

from app.config import Settings
from app.estimates.workers import Announcement, WorkerRegistry, announce_worker, worker_key


@pytest.fixture
def announced(settings: Settings, redis_client: redis.Redis) -> Iterator[list[str]]:
    """The announcement keys the test wrote, deleted at its end."""
    keys: list[str] = []
    yield keys
    if keys:
        redis_client.delete(*keys)


def test_workers_announce_the_training_queues_they_serve_with_their_slots_and_devices(
    settings: Settings, redis_client: redis.Redis, announced: list[str]
) -> None:
    cpu, gpu = settings.training_queue_for("cpu"), settings.training_queue_for("gpu")
    registry = WorkerRegistry(redis_client, settings, max_age_seconds=0)
    assert registry.training_slots() is None and registry.serving(gpu) == []
    announced += [worker_key(cpu, "host:1"), worker_key(cpu, "host:2"), worker_key(gpu, "host:2")]
    assert announce_worker(
        redis_client, settings, "host:1", slots=1, queues=[cpu, "analysis"], period_seconds=10
    )
    # One worker of both classes, pinned to 2 GPUs: announced on both queues, its slots counted once.
    assert announce_worker(
        redis_client, settings, "host:2", slots=2, queues=[cpu, gpu], period_seconds=10, devices=2
    )
    # A worker of no training queue (the analysis queue, the bare TRAINING_QUEUE) has no training slot.
    assert not announce_worker(
        redis_client,
        settings,
        "host:4",
        slots=4,
        queues=["analysis", settings.training_queue],
        period_seconds=10,
    )
    # Another deployment's queues (a longer prefix) are not this one's.
    other = settings.model_copy(update={"training_queue": f"{settings.training_queue}-other"})
    announced.append(worker_key(other.training_queue_for("cpu"), "host:3"))
    announce_worker(
        redis_client, other, "host:3", slots=1, queues=[other.training_queue_for("cpu")], period_seconds=10
    )

    assert registry.training_slots() == 3
    assert sorted(registry.serving(cpu) or [], key=lambda a: a.worker) == [
        Announcement("host:1", 1, None),
        Announcement("host:2", 2, 2),
    ]
    assert registry.serving(gpu) == [Announcement("host:2", 2, 2)]
    assert redis_client.keys(worker_key("*", "host:4")) == []
    assert 0 < redis_client.ttl(worker_key(cpu, "host:1")) <= 30
    assert json.loads(redis_client.get(worker_key(gpu, "host:2")) or "") == {"slots": 2, "devices": 2}


def test_reads_are_cached_and_a_bare_slot_count_is_read(
    settings: Settings, redis_client: redis.Redis, announced: list[str]
) -> None:
    cpu = settings.training_queue_for("cpu")
    registry = WorkerRegistry(redis_client, settings, max_age_seconds=3600)
    assert registry.serving(cpu) == []
    key = worker_key(cpu, "old-host:7")
    announced.append(key)
    redis_client.set(key, 3, ex=30)  # what a worker of the previous version writes
    assert registry.serving(cpu) == []  # read again only after max_age_seconds
    registry.max_age_seconds = 0
    assert registry.serving(cpu) == [Announcement("old-host:7", 3, None)]
    assert registry.training_slots() == 3


def test_without_redis_nothing_is_known(settings: Settings) -> None:
    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    registry = WorkerRegistry(unreachable, settings, max_age_seconds=0)
    assert registry.announcements() is None
    assert registry.serving(settings.training_queue_for("gpu")) is None
    assert registry.training_slots() is None
