"""The live stream of a run: publish and read back, expiry, message types."""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis

from app.runs import live
from app.runs.live import LivePublisher, StatusMessage
from app.runs.schemas import RunEventPublic
from app.runs.states import RunStatus
from worker.pretraining.records import EvalMetrics, MetricsRecord


@pytest.fixture
def run_id(redis_client: redis.Redis) -> Iterator[str]:
    run_id = f"run_live_{secrets.token_hex(6)}"
    yield run_id
    redis_client.delete(live.stream_key(run_id))


def test_publish_then_read_since_round_trip(redis_client: redis.Redis, run_id: str) -> None:
    assert live.stream_key(run_id) == f"bertpt:run:{run_id}:stream"
    metrics = EvalMetrics(masked_lm_loss=7.25, masked_lm_accuracy=0.5, perplexity=math.inf)
    first = live.publish(redis_client, run_id, MetricsRecord(split="eval", step=1, metrics=metrics))
    created = datetime(2026, 11, 30, tzinfo=UTC)
    event = RunEventPublic(id=7, created_at=created, level="info", type="evaluation", message="eval", data={})
    live.publish(redis_client, run_id, event)
    live.publish(redis_client, run_id, StatusMessage(status=RunStatus.SUCCEEDED))

    entries = live.read_since(redis_client, run_id, "0-0", count=10)
    assert [entry.type for entry in entries] == ["metric", "event", "status"]
    assert entries[0].json() == {
        "split": "eval",
        "step": 1,
        "metrics": {
            "masked_lm_loss": 7.25,
            "masked_lm_accuracy": 0.5,
            "perplexity": None,  # JSON has no infinity: null, and the flag says which
            "next_sentence_loss": None,
            "next_sentence_accuracy": None,
            "non_finite": {"perplexity": "inf"},
        },
    }
    assert RunEventPublic.model_validate_json(entries[1].data) == event
    assert entries[2].ends_stream and not entries[0].ends_stream
    assert entries[0].id == first
    # Resuming after an id gives what follows it; after the last one, nothing.
    assert [entry.type for entry in live.read_since(redis_client, run_id, first)] == ["event", "status"]
    assert live.read_since(redis_client, run_id, entries[-1].id) == []
    assert [entry.type for entry in live.read_since(redis_client, run_id, "0-0", count=1)] == ["metric"]
    ttl = redis_client.ttl(live.stream_key(run_id))
    assert 0 < ttl <= live.STREAM_TTL_SECONDS


def test_read_since_waits_up_to_block_ms(redis_client: redis.Redis, run_id: str) -> None:
    started = time.monotonic()
    assert live.read_since(redis_client, run_id, "$", block_ms=150) == []
    assert time.monotonic() - started >= 0.1


def test_the_publisher_survives_an_unreachable_redis(run_id: str, caplog: pytest.LogCaptureFixture) -> None:
    unreachable = live.create_redis("redis://127.0.0.1:1/0", socket_timeout=0.5)
    publisher = LivePublisher(unreachable)
    for _ in range(3):
        publisher.publish(run_id, StatusMessage(status=RunStatus.RUNNING))  # logged, never raised
    assert sum("live stream unavailable" in record.message for record in caplog.records) == 1
    LivePublisher(None).publish(run_id, StatusMessage(status=RunStatus.RUNNING))  # no stream: nothing
