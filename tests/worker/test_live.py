"""The live stream of a run: publish and read back, expiry, message types."""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Iterator

import pytest
import redis

from app.runs import live


@pytest.fixture
def run_id(redis_client: redis.Redis) -> Iterator[str]:
    run_id = f"run_live_{secrets.token_hex(6)}"
    yield run_id
    redis_client.delete(live.stream_key(run_id))


def test_publish_then_read_since_round_trip(redis_client: redis.Redis, run_id: str) -> None:
    assert live.stream_key(run_id) == f"bertpt:run:{run_id}:stream"
    metric = {"split": "train", "step": 1, "metrics": {"loss": 7.25, "grad_norm": math.nan}}
    first = live.publish(redis_client, run_id, "metric", metric)
    live.publish(redis_client, run_id, "event", {"type": "evaluation", "message": "eval at step 1"})
    live.publish(redis_client, run_id, "status", {"status": "succeeded", "progress": {}, "error": None})

    messages = live.read_since(redis_client, run_id, "0-0", count=10)
    assert [(type, data) for _, type, data in messages] == [
        ("metric", {"split": "train", "step": 1, "metrics": {"loss": 7.25, "grad_norm": None}}),
        ("event", {"type": "evaluation", "message": "eval at step 1"}),
        ("status", {"status": "succeeded", "progress": {}, "error": None}),
    ]
    assert messages[0][0] == first
    # Resuming after an id gives what follows it; after the last one, nothing.
    assert [type for _, type, _ in live.read_since(redis_client, run_id, first)] == ["event", "status"]
    assert live.read_since(redis_client, run_id, messages[-1][0]) == []
    assert [m[1] for m in live.read_since(redis_client, run_id, "0-0", count=1)] == ["metric"]
    ttl = redis_client.ttl(live.stream_key(run_id))
    assert 0 < ttl <= live.STREAM_TTL_SECONDS


def test_read_since_waits_up_to_block_ms(redis_client: redis.Redis, run_id: str) -> None:
    started = time.monotonic()
    assert live.read_since(redis_client, run_id, "$", block_ms=150) == []
    assert time.monotonic() - started >= 0.1


def test_unknown_message_types_are_refused(redis_client: redis.Redis, run_id: str) -> None:
    with pytest.raises(ValueError, match="unknown live message type"):
        live.publish(redis_client, run_id, "progress", {})  # type: ignore[arg-type]
